module github.com/imashard/imashard

go 1.26
