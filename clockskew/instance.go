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
	if id == "" {
		return Instance(svc)
	}
	return Instance(svc + "@" + id)
}
