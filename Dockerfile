# One image with the three static binaries; docker-compose.yml picks the
# program per service.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/csvreader ./csvreader \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/crmintegrator ./crmintegrator \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/fakecrm ./crmintegrator/cmd/fakecrm

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER nonroot:nonroot
ENTRYPOINT []
