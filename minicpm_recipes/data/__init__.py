"""Dataset files for LLaMA-Factory: stream records, check them (schema + LLaMA-Factory's rules), report.

loader (stream records with file/line) -> checker (compiled schema + rules, pure) -> result -> report.
Entry points: `minicpm_recipes.data.validate.validate_file` / `validate_dataset`.
"""
