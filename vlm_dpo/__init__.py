"""vlm_dpo: align vision-language models with Direct Preference Optimization.

Data flows one way, each stage a library function that reads and writes inspectable files:
world -> detect -> ground -> describe -> pairs -> train -> eval -> report.
"""

__version__ = "0.1.0"
