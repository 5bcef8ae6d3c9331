# GPU image for distill-export: CUDA, TensorRT 10 and PyTorch from NVIDIA's NGC PyTorch
# container (25.01: PyTorch 2.6, TensorRT 10.8, Python 3.12), plus this package.
#
#   docker build -t distill-export .
#   docker run --gpus all --rm distill-export distill-export run
#   docker run --gpus all --rm -v "$PWD/runs:/work/runs" distill-export \
#       distill-export run --out runs/gpu --format onnx,onnx-fp16,onnx-int8,tensorrt-fp16,tensorrt-int8
#
# Not built or run by the authors yet: the development machine has no Docker engine and no GPU.
FROM nvcr.io/nvidia/pytorch:25.01-py3

WORKDIR /opt/distill-export
COPY pyproject.toml README.md requirements-runtime.txt ./
COPY models ./models
COPY distill_export ./distill_export

# torch, torchvision and TensorRT come with the base image. Install every other dependency
# from pyproject.toml, then the package itself with --no-deps, so pip never swaps NVIDIA's
# torch build for a PyPI one. onnxruntime is the CPU build: parity of the ONNX files runs on CPU.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if not d.startswith('torch')))" > /tmp/deps.txt \
 && python -m pip install --no-cache-dir -r /tmp/deps.txt \
 && python -m pip install --no-cache-dir --no-deps . \
 && python -c "import tensorrt, torch, distill_export; print('TensorRT', tensorrt.__version__, 'torch', torch.__version__)"

WORKDIR /work
CMD ["distill-export", "run"]
