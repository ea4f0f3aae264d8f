# One image for the extender (`gpuslice serve`) and the node agent (`gpuslice agent`).
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
