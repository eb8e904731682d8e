// Package regulator holds the regulators' published reference files, embedded
// so that a built binary can validate and map reports without the repository.
// The adapters live in subpackages: ofb for Open Finance Brasil's metrics
// platform (PCM) and ofbfake for a strict local stand-in of that platform.
package regulator

import _ "embed"

//go:embed testdata/PCM-v310.openapi.yaml
var ofbSpec []byte

//go:embed testdata/ofb-pcm-accepted-endpoints.tsv
var ofbEndpointsTSV []byte

// OFBSpec returns the Open Finance Brasil PCM OpenAPI document, version 3.1.0,
// as published in OpenBanking-Brasil/pcm-specs at commit
// 304c15c75570df423e6ec53ab9f5247c7304a2e7. Callers must not modify the slice.
func OFBSpec() []byte { return ofbSpec }

// OFBEndpointsTSV returns the tab-separated list of endpoint templates that
// the PCM accepts (Confluence page "Endpoints aceitos pela PCM", version 1.03).
// Lines starting with '#' are comments and the first other line is the header
// "section family endpoint". Callers must not modify the slice.
func OFBEndpointsTSV() []byte { return ofbEndpointsTSV }
