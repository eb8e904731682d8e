package regulator

import _ "embed"

//go:embed testdata/opin-ingestion-v1.0.13.yaml
var opinSpec []byte

// OPINSpec returns the Open Insurance Brasil metrics ingestion OpenAPI
// document ("API de ingestão da coleta de métricas"), version 1.0.13, copied
// byte for byte (sha256
// 94f8ea7b085dd12e74bfcc81935d33bd0e79c10a431cac5423f56cb9e42d4786).
// Callers must not modify the slice.
func OPINSpec() []byte { return opinSpec }
