//go:build unix && !linux

package analyze

const mapPopulate = 0
