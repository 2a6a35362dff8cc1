# lhttpd and lhttp in a small image that runs as an unprivileged user.
#
#   docker build -t lhttpd .
#   docker run --rm -p 8081:8081 lhttpd
#   docker run --rm -p 8081:8081 -v $PWD/lhttpd.toml:/etc/lhttpd/lhttpd.toml:ro \
#       lhttpd --config /etc/lhttpd/lhttpd.toml --listen 0.0.0.0:8081
#
# Inside the container lhttpd must listen on 0.0.0.0 to be reachable through the published port;
# that makes it as open as the port you publish: read docs/security.md before exposing it.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lhttpd --bin lhttp

FROM debian:bookworm-slim
# CA certificates: lhttpd verifies TLS peers (NATS, upstream back ends) against them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/lhttpd --create-home lhttpd
COPY --from=build /src/target/release/lhttpd /src/target/release/lhttp /usr/local/bin/
USER lhttpd:lhttpd
# The disk store of channel history (history.path is relative) lands here.
WORKDIR /var/lib/lhttpd
EXPOSE 8081
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/lhttpd"]
CMD ["--listen", "0.0.0.0:8081"]
