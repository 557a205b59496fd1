# chatweb image: every service binary (chatweb-auth, -billing, -chat, -proxy) and the web root,
# on Debian 12 slim, run as the non-root user chatweb (10001) with a read-only root file system
# (the Helm chart mounts an emptyDir on /tmp). One image; the chart picks the binary per Deployment.
#
#   docker build -t chatweb:dev .
#
# No `# syntax=` line and nothing BuildKit-only (RUN --mount, heredocs, COPY --link): the classic
# builder (DOCKER_BUILDKIT=0) builds it too, and neither builder fetches a frontend image from
# Docker Hub. scripts/image-check (make image-check) builds it that way and runs it.
#
# Every RUN below is one step of scripts/image-steps, in the order `scripts/image-steps --list`
# prints; CI runs the same steps on the host (scripts/image-steps all), and
# tests/k8s/image.test.mjs fails when this file and that script disagree. The web root is
# web/dist when a built web UI is in the build context, else deploy/local/www (decided in the
# stage step, since COPY cannot be conditional).
#
# The deps step (the Debian package install, minutes) gets only the files it reads: with the
# whole tree copied first, any commit would invalidate its layer and every rebuild would
# reinstall the packages. tests/k8s/image.test.mjs runs the deps step with only these files and
# fails if it then reads something else, so add any new input of scripts/bootstrap here.

FROM debian:12-slim AS build
WORKDIR /src
COPY scripts/bootstrap scripts/image-steps scripts/
RUN scripts/image-steps deps
COPY . .
RUN scripts/image-steps build
RUN scripts/image-steps stage /out
RUN scripts/image-steps check /out

FROM debian:12-slim
COPY --from=build /src/scripts/image-steps /tmp/image-steps
COPY --from=build /out/usr/share/chatweb/runtime-packages /tmp/runtime-packages
RUN /tmp/image-steps runtime /tmp/runtime-packages && rm /tmp/image-steps /tmp/runtime-packages
COPY --from=build /out/ /
USER 10001:10001
WORKDIR /tmp
ENV HTTP_ADDR=0.0.0.0:8080 ADMIN_ADDR=0.0.0.0:9090 DATA_DIR=/tmp/data
EXPOSE 8080 9090
# No default binary: the chart (or `docker run IMAGE chatweb-chat`) names it.
CMD ["chatweb-chat"]
