package clockskew

import "github.com/threadline/threadline/span"

// identityKeys are the resource attributes that name the process (and so the
// clock) a span was timed with, most specific first. service.instance.id is
// unique per process; host.id and host.name name the machine whose clock all
// its processes share; k8s.pod.uid covers pods that report none of those.
var identityKeys = [...]string{"service.instance.id", "host.id", "host.name", "k8s.pod.uid"}

// InstanceOf names the clock behind a resource: "<service.name>@<identity>",
// where identity is the first non-empty of service.instance.id, host.id,
// host.name and k8s.pod.uid. Without any of those it is just the service name,
// so all replicas of the service are assumed to share one clock (the best
// guess left). A missing service.name reads "unknown_service", as the OTel
// SDKs report it.
func InstanceOf(r *span.Resource) Instance {
	return instanceKey(r).name()
}

// instKey is an Instance before its parts are joined: joining allocates, and
// most instances a trace groups its spans by are never named.
type instKey struct {
	svc, id string // id "" when the resource names no identity
}

// instanceKey returns the parts of InstanceOf(r).
func instanceKey(r *span.Resource) instKey {
	svc, id, rank := "", "", len(identityKeys)
	if r != nil {
		for _, kv := range r.Resource.GetAttributes() {
			v := kv.GetValue().GetStringValue()
			if v == "" {
				continue
			}
			if kv.GetKey() == "service.name" {
				svc = v
				continue
			}
			for i, k := range identityKeys[:rank] {
				if kv.GetKey() == k {
					id, rank = v, i
					break
				}
			}
		}
	}
	if svc == "" {
		svc = "unknown_service"
	}
	return instKey{svc: svc, id: id}
}

func (k instKey) name() Instance {
	if k.id == "" {
		return Instance(k.svc)
	}
	return Instance(k.svc + "@" + k.id)
}

// sameName reports whether k.name() == o.name() without joining either.
// Different parts can join to the same name ("a@b"+"c" and "a"+"b@c"), and
// the instance is the name, so the joined bytes are compared.
func (k instKey) sameName(o instKey) bool {
	if k.svc == o.svc {
		return k.id == o.id // "svc" ≠ "svc@id", and "svc@a" = "svc@b" only if a = b
	}
	n := k.nameLen()
	if n != o.nameLen() {
		return false
	}
	for i := range n {
		if k.nameByte(i) != o.nameByte(i) {
			return false
		}
	}
	return true
}

func (k instKey) nameLen() int {
	if k.id == "" {
		return len(k.svc)
	}
	return len(k.svc) + 1 + len(k.id)
}

// nameByte returns k.name()[i].
func (k instKey) nameByte(i int) byte {
	switch {
	case i < len(k.svc):
		return k.svc[i]
	case i == len(k.svc):
		return '@'
	}
	return k.id[i-len(k.svc)-1]
}
