"""The run folder on disk: atomic save and load with validation (checkpoint), weights
(safetensors) and Hugging Face names, strict readers, atomic writes, output-folder
checks and run locks. Knows nothing of training loops or generation."""
