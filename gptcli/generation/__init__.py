"""Generation: the engine that holds a loaded model (engine), the loops (search), the
pure logits functions (sampling), the decoders and their prepared kernels, the KV
cache, and the text side (text). Imports nothing at package import."""
