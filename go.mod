module github.com/imashard/imashard

go 1.26

require (
	github.com/fxamacker/cbor/v2 v2.9.6
	github.com/google/go-tpm v0.9.8
	golang.org/x/sys v0.45.0
)

require github.com/x448/float16 v0.8.4 // indirect
