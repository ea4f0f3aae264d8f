# The one image deploy/ runs (`make image`, tagged ghcr.io/gpuslice/gpuslice:<version>): the extender
# (`gpuslice serve`), the node agent (`gpuslice agent run`) and the admission webhook (`gpuslice
# webhook`). Every command works on a read-only root filesystem as uid 65532 with no HOME, as the
# manifests run it (tests/test_runs_as_deployed.py); the extender's exec probes use this image's python.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extender ./extender
RUN pip install . && rm -rf /src
WORKDIR /
USER 65532:65532
ENTRYPOINT ["gpuslice"]
CMD ["--help"]
