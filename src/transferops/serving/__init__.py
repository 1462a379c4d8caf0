"""Serving: the ONNX export (:mod:`.onnx_export`), its INT8 quantisation (:mod:`.quantize`) and
``transferops predict`` (:mod:`.predict`), over the shared loading code in :mod:`.runtime`."""
