"""Hand-picked kernels XLA calls through its FFI where they beat its own lowering."""
