"""The FFN registry (`model.ffn`), filled with its entries by model/ffn/__init__.py. It has a module of its own so
that an FFN made of other FFNs (MoE: each expert is a registered dense FFN) can read it without importing the
package that imports it."""

from model.component import FFN, Registry

FFNS = Registry("ffn", FFN, {})
