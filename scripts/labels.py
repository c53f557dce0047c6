"""The labels this project reads and writes on images and containers."""

# OCI's image annotations (org.opencontainers.image.source, .revision, ...).
LABEL_PREFIX = "org.opencontainers.image"
REVISION_LABEL = f"{LABEL_PREFIX}.revision"
# Which backend an image is; every container made from it, build steps included, carries it.
BACKEND_LABEL = "io.github.dask-gateway-ci.backend"
# Set on the containers this tool starts.
STARTED_LABEL = "io.github.dask-gateway-ci.started"
# The consumer of the mounted checkout (consumers/*.toml), chosen at start:
# install and test, later sessions, run what it declares.
CONSUMER_LABEL = "io.github.dask-gateway-ci.consumer"
