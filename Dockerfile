# lmap: build on Debian 12 with its packaged libraries, ship a slim runtime.
FROM debian:12-slim AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake gcc make pkg-config libc6-dev \
      liblmdb-dev libzstd-dev libjansson-dev libarchive-dev libmicrohttpd-dev libuv1-dev libcurl4-openssl-dev \
      libxxhash-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt CMakePresets.json ./
COPY cmake cmake
COPY include include
COPY client client
COPY server server
COPY tests tests
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DLMAP_BUILD_TESTS=OFF \
    && cmake --build /build -j"$(nproc)" \
    && cmake --install /build --prefix /opt/lmap

FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      liblmdb0 libzstd1 libjansson4 libarchive13 libmicrohttpd12 libuv1 libcurl4 libxxhash0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin lmap
COPY --from=build /opt/lmap/bin/ /usr/local/bin/
# liblmap, its headers, CMake package and pkg-config file, for client images
# built on this one.
COPY --from=build /opt/lmap/lib/ /usr/local/lib/
COPY --from=build /opt/lmap/include/ /usr/local/include/
RUN ldconfig
USER lmap
# Stores are mounted read-only here.
VOLUME ["/data"]
ENTRYPOINT ["lmap"]
CMD ["--help"]
