package event

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// attrsLine is an event line with n attrs, keys key(i) and values "v<i>".
func attrsLine(n int, key func(i int) string) string {
	var b strings.Builder
	b.WriteString(`{"ts":1764300000000,"event_type":"error.hw","entity_id":"gpu-0","value":"Xid 79","attrs":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:\"v%d\"", key(i), i)
	}
	b.WriteString("}}\n")
	return b.String()
}

func distinctKeys(i int) string { return "k" + strconv.Itoa(i) }

// Issue 12 item 4: one event with 100,000 attrs kept a hub worker busy for
// 15 s. Past MaxAttrs an event is rejected, counted by its own reason, and
// the next line is read normally.
func TestDecodeRejectsAnEventWithMoreThanMaxAttrs(t *testing.T) {
	next := `{"ts":1764300000000,"event_type":"compute.util","entity_id":"gpu-1","value":"5"}` + "\n"
	in := attrsLine(MaxAttrs, distinctKeys) + attrsLine(MaxAttrs+1, distinctKeys) + attrsLine(100_000, distinctKeys) + next
	evs, rejs, d := decodeAll(t, in, WithMaxLineBytes(len(in)))
	if len(evs) != 2 || len(evs[0].Attrs) != MaxAttrs || evs[1].EntityID != "gpu-1" {
		t.Fatalf("accepted %d events (attrs %d), want the one at the bound and the next line", len(evs), len(evs[0].Attrs))
	}
	if len(rejs) != 2 {
		t.Fatalf("%d rejections, want 2", len(rejs))
	}
	for i, re := range rejs {
		if re.Reason != ReasonTooManyAttrs || re.Line != int64(i+2) || re.Detail != "more than 64 attrs" {
			t.Errorf("rejection %d: %+v, want too_many_attrs on line %d", i, re, i+2)
		}
	}
	if got := d.Rejected()[ReasonTooManyAttrs]; got != 2 {
		t.Errorf("Rejected()[too_many_attrs] = %d, want 2", got)
	}
	// The same through Unmarshal, which the link and the slow paths use.
	var ev Event
	var re *RejectError
	if err := Unmarshal([]byte(attrsLine(100_000, distinctKeys)), &ev); !errors.As(err, &re) || re.Reason != ReasonTooManyAttrs {
		t.Errorf("Unmarshal of 100,000 attrs: %v, want too_many_attrs", err)
	}
}

// Decoding appends keys and compacts once; a repeated key keeps its first
// place and takes its last value, as Set did, on both sides of the
// pairwise/map switch and across repeated "attrs" objects.
func TestRepeatedAttrKeysKeepTheirFirstPlaceAndTheirLastValue(t *testing.T) {
	for _, tt := range []struct {
		name, attrs string
		want        Attrs
	}{
		{"few", `"attrs":{"a":"1","b":"2","a":"3"}`, Attrs{{"a", "3"}, {"b", "2"}}},
		{"one key many times", `"attrs":{"a":"1","a":"2","a":"3","a":"4","a":"5","a":"6","a":"7","a":"8","a":"9","a":"10"}`,
			Attrs{{"a", "10"}}},
		{"many", `"attrs":{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7","h":"8","i":"9","b":"x","j":"10","a":"y"}`,
			Attrs{{"a", "y"}, {"b", "x"}, {"c", "3"}, {"d", "4"}, {"e", "5"}, {"f", "6"}, {"g", "7"}, {"h", "8"}, {"i", "9"}, {"j", "10"}}},
		{"two attrs objects", `"attrs":{"a":"1","b":"2"},"attrs":{"c":"3","a":"4"}`, Attrs{{"a", "4"}, {"b", "2"}, {"c", "3"}}},
		{"numbers and booleans kept as text", `"attrs":{"n":12,"t":true,"n":1.5}`, Attrs{{"n", "1.5"}, {"t", "true"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			line := `{"ts":1764300000000,"event_type":"error.hw","entity_id":"gpu-0","value":"x",` + tt.attrs + `}`
			var ev Event
			if err := Unmarshal([]byte(line), &ev); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ev.Attrs, tt.want) {
				t.Errorf("attrs %v, want %v", ev.Attrs, tt.want)
			}
			var set Attrs
			for _, a := range setOrder(tt.attrs) {
				set.Set(a.Key, a.Value)
			}
			if !reflect.DeepEqual(ev.Attrs, set) {
				t.Errorf("attrs %v, Set gives %v", ev.Attrs, set)
			}
		})
	}
}

// setOrder reads the key/value pairs of the test's attrs objects in order.
func setOrder(attrs string) []Attr {
	var out []Attr
	for _, obj := range strings.Split(attrs, `"attrs":`)[1:] {
		obj = strings.TrimSuffix(strings.Trim(strings.TrimSuffix(obj, ","), "{}"), "}")
		for _, kv := range strings.Split(obj, ",") {
			k, v, _ := strings.Cut(kv, ":")
			out = append(out, Attr{strings.Trim(k, `"`), strings.Trim(v, `"`)})
		}
	}
	return out
}

// FuzzAttrs decodes events whose attrs keys the fuzzer picks, repeats
// included: an event is accepted exactly when it has at most MaxAttrs
// entries, and its attrs then equal what Set makes of them, each key once.
func FuzzAttrs(f *testing.F) {
	f.Add([]byte("abcab"))
	f.Add([]byte(strings.Repeat("x", MaxAttrs+1)))
	f.Add([]byte("0123456789abcdefghij0123456789"))
	f.Fuzz(func(t *testing.T, keys []byte) {
		const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_.:"
		key := func(i int) string { return alphabet[keys[i]%40 : keys[i]%40+1] }
		line := attrsLine(len(keys), key)
		var ev Event
		err := Unmarshal([]byte(line), &ev)
		if len(keys) > MaxAttrs {
			var re *RejectError
			if !errors.As(err, &re) || re.Reason != ReasonTooManyAttrs {
				t.Fatalf("%d attrs: %v, want too_many_attrs", len(keys), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%d attrs: %v", len(keys), err)
		}
		var want Attrs
		for i := range keys {
			want.Set(key(i), "v"+strconv.Itoa(i))
		}
		if len(want) == 0 {
			want = nil
		}
		got := ev.Attrs
		if len(got) == 0 {
			got = nil
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("attrs %v, Set gives %v", got, want)
		}
	})
}

// BenchmarkDecodeAttrs decodes one event with n distinct attrs: at the
// bound it is accepted, past it rejected as soon as the bound is passed.
// Before the bound, 100,000 attrs took seconds (a search of every earlier
// key per key).
func BenchmarkDecodeAttrs(b *testing.B) {
	for _, n := range []int{8, MaxAttrs, 100_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			line := []byte(attrsLine(n, distinctKeys))
			b.SetBytes(int64(len(line)))
			b.ReportAllocs()
			var ev Event
			for b.Loop() {
				err := Unmarshal(line, &ev)
				if (err != nil) != (n > MaxAttrs) {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCompact compacts n attrs in which every key appears twice: the
// time per attr stays flat as n grows (linear), where Set per key grows
// with n (quadratic).
func BenchmarkCompact(b *testing.B) {
	for _, n := range []int{MaxAttrs, 1000, 100_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			src := make(Attrs, n)
			for i := range src {
				src[i] = Attr{Key: "k" + strconv.Itoa(i%(n/2)), Value: "v"}
			}
			a := make(Attrs, n)
			b.ReportAllocs()
			for b.Loop() {
				a = append(a[:0], src...)
				a.Compact()
			}
			if len(a) != n/2 {
				b.Fatalf("%d attrs left, want %d", len(a), n/2)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/attr")
		})
	}
}
