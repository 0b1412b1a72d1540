# Component image for Kubeflow Pipelines (and the retraining CronJob).
# Build: docker build -t REGISTRY/graft:0.1.0 .   (not built in this repo's CI: no Docker engine)
# The TensorFlow GPU base matches the pinned tensorflow 2.21; on CPU nodes it runs on the CPU.
FROM tensorflow/tensorflow:2.21.0-gpu
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2
# the commit the model registry records as each version's code version (no .git in the image):
#   docker build --build-arg GRAFT_GIT_COMMIT=$(git rev-parse HEAD) ...
ARG GRAFT_GIT_COMMIT=unknown
ENV GRAFT_GIT_COMMIT=$GRAFT_GIT_COMMIT
COPY pyproject.toml README.md ./
COPY graft/ graft/
COPY core/ core/
COPY pipeline/ pipeline/
COPY components/ components/
COPY serving/ serving/
RUN pip install .
# configs/ travels with the image: the CronJob and `graft submit` read it from /app/configs
COPY configs/ configs/
# the GPU check runs on a GPU node in this same image:
#   docker run --gpus all -e OUT=/tmp/gpu REGISTRY/graft:0.1.0 benchmarks/gpu_check.sh
COPY benchmarks/ benchmarks/
RUN useradd --uid 1000 --create-home graft
USER 1000
ENTRYPOINT []
