"""Runtimes that run exported artifacts and PyTorch models, one module each, in one registry
(base.py, ``@register_runtime``) that validate.py and profiling/ look up instead of branching:

    onnx_runtime.py     ONNX Runtime: CPU, CUDA and TensorRT execution providers (.onnx)
    openvino_cpu.py     OpenVINO's CPU plugin, reading the .onnx file itself (optional extra)
    tensorrt_engine.py  serialized TensorRT engines (.engine), built by export/tensorrt.py
    pytorch.py          PyTorch eager, channels_last, torch.compile, CUDA graphs (checkpoints)

Each runtime names its profiling backends (``--backend``), says why it cannot run here, and
gives validate a runner ((x, batch) -> logits) and the profiler a timer. Nothing here imports
torch, onnxruntime, OpenVINO or TensorRT at module level.
"""
