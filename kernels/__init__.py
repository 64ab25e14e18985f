"""The CPU speed room: everything that makes CPU runs fast lives here, and nothing else
imports its internals.

  runtime.py       process setup (tcmalloc, XLA flags, quiet logging), allocator reporting
  convolutions.py  which convolution a run's models call (`select` -> `Convolutions`)
  onednn.py        oneDNN convolutions through the XLA FFI (onednn_conv.cc, `make kernels`)
  xla_conv.py      XLA's convolutions with this project's CPU lowering choices
Models run without any of it built: their default convolution is `lax.conv_general_dilated`.
"""
