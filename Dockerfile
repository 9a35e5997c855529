# lmap: built on Debian 12 with its packaged libraries; the runtime image
# holds lmapd, the lmap tool and the libraries they load, nothing else.
#
#   docker build --network host -t lmap .
#   docker run -v /srv/stores:/data:ro -p 8080:8080 lmap      # serves /data/store.lmap
#   docker run --rm -v /srv/stores:/data:ro lmap lmap info /data/store.lmap
#
# lmapd takes its settings from LMAPD_* variables (lmapd --help): -e
# LMAPD_STORE=/data/other.lmap, -e LMAPD_TOKEN_FILE=/run/secrets/token...
# The store must be readable by uid 10001. See docs/OPERATIONS.md.
FROM debian:12-slim AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake gcc make pkg-config libc6-dev \
      liblmdb-dev libzstd-dev libjansson-dev libarchive-dev libmicrohttpd-dev libuv1-dev \
      libcurl4-openssl-dev libxxhash-dev libsystemd-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt CMakePresets.json ./
COPY cmake cmake
COPY include include
COPY client client
COPY server server
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DLMAP_BUILD_TESTS=OFF \
    && cmake --build /build -j"$(nproc)" --target lmap lmapd \
    && strip /build/lmap /build/lmapd

FROM debian:12-slim
# The shared libraries lmap and lmapd link (liblmap is linked in
# statically), and the CA certificates for HTTPS servers.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      liblmdb0 libzstd1 libjansson4 libarchive13 libmicrohttpd12 libuv1 libcurl4 libxxhash0 libsystemd0 \
      ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 10001 lmap \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin lmap
COPY --from=build /build/lmap /build/lmapd /usr/local/bin/
# Serve /data/store.lmap on every interface of the container. The drain on
# SIGTERM fits in `docker stop`'s 10 s (Kubernetes sets its own).
ENV LMAPD_STORE=/data/store.lmap \
    LMAPD_LISTEN=0.0.0.0:8080 \
    LMAPD_GRACE=8
EXPOSE 8080
VOLUME ["/data"]
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
STOPSIGNAL SIGTERM
# lmap's own readiness check: GET /readyz on the address LMAPD_LISTEN names.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["lmap", "query", "--ready", "--retries", "0", "--timeout", "3"]
CMD ["lmapd"]
