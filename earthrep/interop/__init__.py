"""The reference PyTorch code: its state-dict layout (`torch_import`), checkpoint conversion (`convert`,
`python -m earthrep.convert`) and the parity check against its vectors (`parity`, `python -m earthrep.parity`)."""
