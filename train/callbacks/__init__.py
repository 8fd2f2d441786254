"""Lightning callbacks a run adds: the ones every run gets (standard: throughput and MFU, sampled stories, final
weights), the map from a component to its own callbacks (components), and MoE's expert-share log (expert_share)."""
