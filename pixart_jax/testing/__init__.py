"""What the tests and the benchmarks both need: reference models with random weights in the real on-disk layouts
(a diffusers pipeline folder, T5 / VAE / tokenizer stand-ins) and random re-draws of every parameter. torch,
diffusers and transformers are imported inside the functions that use them."""
