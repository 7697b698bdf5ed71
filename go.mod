module github.com/imashard/imashard

go 1.26

require github.com/google/go-tpm v0.9.8

require golang.org/x/sys v0.45.0 // indirect
