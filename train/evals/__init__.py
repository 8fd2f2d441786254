"""Evaluation with lm-evaluation-harness: the model class (lm_eval_model), the command (evaluate) and the offline
tasks of this repository (tasks/)."""
