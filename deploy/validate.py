#!/usr/bin/env python3
"""Checks for deploy/ that the Kubernetes schemas cannot make, run by deploy/validate.sh inside
its venv (PyYAML comes with kubernetes-validate).

    validate.py render DIR               print the kustomization in DIR, rendered
    validate.py same A B                 two renderings hold the same objects
    validate.py enums FILE...            enum fields the schemas leave as plain strings
    validate.py manifests FILE [--tls]   the install's own rules (webhook, RBAC, references...)
    validate.py dockerfiles ROOT         the Dockerfiles' stages, user and cargo command

Rendering does what kustomize does for the subset deploy/kubernetes uses: `resources` (files
and directories holding a kustomization.yaml) and `patches` given by `path`, applied as
strategic merges (mappings merged, lists of named items merged by `name`, other lists
replaced). Anything else in a kustomization.yaml is refused, so that the rendering checked here
never silently differs from what `kubectl apply -k` applies.

Every check prints `FAIL: ...` for each problem and exits 1 if there was any.
"""

import copy
import os
import re
import shlex
import sys

import yaml

FAILURES = []


def fail(message):
    FAILURES.append(message)
    print(f"FAIL: {message}")


def finish():
    sys.exit(1 if FAILURES else 0)


# --------------------------------------------------------------------------- rendering


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def render(directory):
    path = os.path.join(directory, "kustomization.yaml")
    (kustomization,) = load_all(path)
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    if unsupported:
        raise SystemExit(f"{path}: unsupported fields {sorted(unsupported)}; see validate.py")
    objects = []
    for resource in kustomization.get("resources", []):
        target = os.path.normpath(os.path.join(directory, resource))
        objects += render(target) if os.path.isdir(target) else load_all(target)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise SystemExit(f"{path}: only `patches: - path: FILE` is supported, got {patch}")
        patch_path = os.path.join(directory, patch["path"])
        for doc in load_all(patch_path):
            matches = [o for o in objects if same_id(o, doc)]
            if len(matches) != 1:
                raise SystemExit(f"{patch_path}: matches {len(matches)} objects, not 1")
            merge(matches[0], doc)
    return objects


def object_id(obj):
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion"), obj.get("kind"), meta.get("namespace"), meta.get("name"))


def same_id(obj, patch):
    meta, pmeta = obj.get("metadata", {}), patch.get("metadata", {})
    return (
        obj.get("apiVersion") == patch.get("apiVersion")
        and obj.get("kind") == patch.get("kind")
        and meta.get("name") == pmeta.get("name")
        and ("namespace" not in pmeta or meta.get("namespace") == pmeta["namespace"])
    )


def named_list(items):
    return isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)


def merge(base, patch):
    for key, value in patch.items():
        old = base.get(key)
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(old, dict):
            merge(old, value)
        elif named_list(value) and named_list(old):
            # As kustomize merges: the patch's items first, in its order (merged into their
            # twins), then the base's other items in theirs. Order matters for env: $(VAR)
            # expands only a variable defined earlier in the list.
            merged = []
            for item in value:
                twin = next((o for o in old if o["name"] == item["name"]), None)
                if twin is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merge(twin, item)
                    merged.append(twin)
            names = {item["name"] for item in value}
            merged.extend(o for o in old if o["name"] not in names)
            base[key] = merged
        else:
            base[key] = copy.deepcopy(value)


def cmd_render(directory):
    print(yaml.safe_dump_all(render(directory), sort_keys=False), end="")


def cmd_same(a, b):
    left = {object_id(o): o for o in load_all(a)}
    right = {object_id(o): o for o in load_all(b)}
    for key in sorted(set(left) | set(right), key=str):
        if key not in left or key not in right:
            fail(f"{key} only in {a if key in left else b}")
        elif left[key] != right[key]:
            fail(f"{key} differs between {a} and {b}")
    finish()


# --------------------------------------------------------------------------- enums

ENUMS = {
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "podManagementPolicy": {"OrderedReady", "Parallel"},
    "whenUnsatisfiable": {"DoNotSchedule", "ScheduleAnyway"},
    "sideEffects": {"None", "NoneOnDryRun"},
    "failurePolicy": {"Ignore", "Fail"},
    "matchPolicy": {"Exact", "Equivalent"},
    "reinvocationPolicy": {"Never", "IfNeeded"},
}
LIST_ENUMS = {
    "policyTypes": {"Ingress", "Egress"},
    "accessModes": {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"},
    "operations": {"CREATE", "UPDATE", "DELETE", "CONNECT", "*"},
}


def check_enums(node, where):
    if isinstance(node, list):
        for i, item in enumerate(node):
            check_enums(item, f"{where}[{i}]")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        path = f"{where}.{key}"
        if key in ENUMS and isinstance(value, str) and value not in ENUMS[key]:
            fail(f"{path}: {value!r} is not one of {sorted(ENUMS[key])}")
        if key in LIST_ENUMS and isinstance(value, list):
            for item in value:
                if item not in LIST_ENUMS[key]:
                    fail(f"{path}: {item!r} is not one of {sorted(LIST_ENUMS[key])}")
        if key == "protocol" and value not in {"TCP", "UDP", "SCTP"}:
            fail(f"{path}: {value!r} is not one of TCP, UDP, SCTP")
        if key == "matchExpressions" and isinstance(value, list):
            for expression in value:
                if expression.get("operator") not in {"In", "NotIn", "Exists", "DoesNotExist"}:
                    fail(f"{path}: operator {expression.get('operator')!r} is not a selector operator")
        if key == "seccompProfile" and value.get("type") not in {"RuntimeDefault", "Localhost", "Unconfined"}:
            fail(f"{path}.type: {value.get('type')!r} is not a seccomp profile type")
        if key in ("containers", "initContainers") and isinstance(value, list):
            for c in value:
                policy = c.get("restartPolicy")
                if policy is not None and (key == "containers" or policy != "Always"):
                    fail(f"{path}: container {c.get('name')!r} restartPolicy {policy!r}: only init containers may set it, to Always")
        if key == "restartPolicy" and "containers" in node and value not in {"Always", "OnFailure", "Never"}:
            fail(f"{path}: {value!r} is not one of Always, OnFailure, Never")
        if key == "type" and where.endswith("strategy") and value not in {"RollingUpdate", "Recreate"}:
            fail(f"{path}: {value!r} is not one of RollingUpdate, Recreate")
        check_enums(value, path)


def cmd_enums(files):
    for path in files:
        for i, obj in enumerate(load_all(path)):
            check_enums(obj, f"{os.path.basename(path)}[{i}] {obj.get('kind')}")
    finish()


# --------------------------------------------------------------------------- the install


def name(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_templates(objects):
    """(workload, pod template) for every workload."""
    for obj in objects:
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]


def selects(selector, labels):
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        present = expression["key"] in labels
        value = labels.get(expression["key"])
        op, values = expression["operator"], expression.get("values", [])
        if (op == "In" and value not in values) or (op == "NotIn" and present and value in values):
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def selected(objects, namespace, selector):
    return [
        (w, t)
        for w, t in pod_templates(objects)
        if w["metadata"].get("namespace") == namespace and selects(selector, t["metadata"].get("labels", {}))
    ]


def env_value(container, var):
    for item in container.get("env", []):
        if item["name"] == var:
            return item.get("value")
    return None


def check_env_order(workload, container):
    """A value's $(VAR) expands only when VAR is defined earlier in the container's env."""
    import re
    defined = set()
    for item in container.get("env", []):
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", item.get("value") or ""):
            if ref not in defined:
                fail(f"{name(workload)} container {container['name']}: {item['name']} uses $({ref}) before {ref} is defined")
        defined.add(item["name"])


def check_workloads(objects):
    for workload, template in pod_templates(objects):
        for container in template["spec"].get("containers", []) + template["spec"].get("initContainers", []):
            check_env_order(workload, container)
        spec = template["spec"]
        pod_security = spec.get("securityContext", {})
        if pod_security.get("runAsNonRoot") is not True:
            fail(f"{name(workload)}: the pod must set securityContext.runAsNonRoot: true")
        if workload["kind"] == "Deployment" and workload["spec"].get("replicas", 1) < 2:
            fail(f"{name(workload)}: needs 2 or more replicas")
        budgets = [
            o for o in objects
            if o["kind"] == "PodDisruptionBudget"
            and selects(o["spec"]["selector"], template["metadata"].get("labels", {}))
        ]
        if not budgets:
            fail(f"{name(workload)}: no PodDisruptionBudget selects its pods")
        account = spec.get("serviceAccountName")
        if account and not any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account for o in objects):
            fail(f"{name(workload)}: ServiceAccount {account} is not defined")
        for c in spec.get("containers", []):
            where = f"{name(workload)} container {c['name']}"
            resources = c.get("resources", {})
            for kind, field in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
                if field not in resources.get(kind, {}):
                    fail(f"{where}: resources.{kind}.{field} is not set")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    fail(f"{where}: no {probe}")
            port_names = {p.get("name") for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    fail(f"{where}: {probe} uses port {port!r}, which the container does not name")
            security = c.get("securityContext", {})
            if security.get("allowPrivilegeEscalation") is not False:
                fail(f"{where}: securityContext.allowPrivilegeEscalation must be false")
            if security.get("readOnlyRootFilesystem") is not True:
                fail(f"{where}: securityContext.readOnlyRootFilesystem must be true")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                fail(f"{where}: securityContext.capabilities.drop must hold ALL")


def check_services(objects):
    for svc in (o for o in objects if o["kind"] == "Service"):
        matched = selected(objects, svc["metadata"]["namespace"], {"matchLabels": svc["spec"]["selector"]})
        if not matched:
            fail(f"{name(svc)}: its selector matches no pods")
        port_names = {
            p.get("name")
            for _, t in matched
            for c in t["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in port_names:
                fail(f"{name(svc)}: targetPort {target!r} is not a container port of its pods")
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        service = next(
            (o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == sts["spec"]["serviceName"]),
            None,
        )
        if service is None or service["spec"].get("clusterIP") != "None":
            fail(f"{name(sts)}: serviceName {sts['spec']['serviceName']} is not a headless Service")
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        if not selected(objects, pdb["metadata"]["namespace"], pdb["spec"]["selector"]):
            fail(f"{name(pdb)}: its selector matches no pods")


def check_etcd(objects):
    etcd = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "bulwark-etcd"]
    if len(etcd) != 1:
        return fail("StatefulSet/bulwark-etcd is missing")
    sts = etcd[0]
    replicas, service = sts["spec"]["replicas"], sts["spec"]["serviceName"]
    namespace = sts["metadata"]["namespace"]
    if replicas != 3:
        fail(f"{name(sts)}: must have 3 members, has {replicas}")
    if not sts["spec"].get("volumeClaimTemplates"):
        fail(f"{name(sts)}: members need persistent volumes (volumeClaimTemplates)")
    members = [f"bulwark-etcd-{i}.{service}.{namespace}.svc" for i in range(replicas)]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    # With TLS (production), clients and peers are https and must present certificates.
    tls = env_value(container, "ETCD_CLIENT_CERT_AUTH") == "true"
    scheme = "https" if tls else "http"
    if tls:
        for var in ("ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_TRUSTED_CA_FILE", "ETCD_PEER_CERT_FILE",
                    "ETCD_PEER_KEY_FILE", "ETCD_PEER_TRUSTED_CA_FILE"):
            if not env_value(container, var):
                fail(f"{name(sts)}: with ETCD_CLIENT_CERT_AUTH, {var} must be set")
        if env_value(container, "ETCD_PEER_CLIENT_CERT_AUTH") != "true":
            fail(f"{name(sts)}: with ETCD_CLIENT_CERT_AUTH, peers must authenticate too (ETCD_PEER_CLIENT_CERT_AUTH)")
        for var in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_ADVERTISE_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS", "ETCD_INITIAL_ADVERTISE_PEER_URLS"):
            if not (env_value(container, var) or "").startswith("https://"):
                fail(f"{name(sts)}: with ETCD_CLIENT_CERT_AUTH, {var} must be https://")
    expected = ",".join(f"bulwark-etcd-{i}={scheme}://{m}:2380" for i, m in enumerate(members))
    if env_value(container, "ETCD_INITIAL_CLUSTER") != expected:
        fail(f"{name(sts)}: ETCD_INITIAL_CLUSTER must be {expected}")
    for workload, template in pod_templates(objects):
        for c in template["spec"]["containers"]:
            endpoints = env_value(c, "BULWARK_ETCD_ENDPOINTS")
            if endpoints is not None and endpoints.split(",") != [f"{scheme}://{m}:2379" for m in members]:
                fail(f"{name(workload)}: BULWARK_ETCD_ENDPOINTS must list every etcd member ({scheme}://)")
            if endpoints is not None and tls and not all(env_value(c, v) for v in ("BULWARK_ETCD_CA", "BULWARK_ETCD_CERT", "BULWARK_ETCD_KEY")):
                fail(f"{name(workload)}: etcd requires client certificates: set BULWARK_ETCD_CA, BULWARK_ETCD_CERT and BULWARK_ETCD_KEY")


def check_rbac(objects):
    for role in (o for o in objects if o["kind"] in ("ClusterRole", "Role")):
        for rule in role.get("rules", []):
            if rule.get("apiGroups") != [""] or rule.get("resources") != ["namespaces"]:
                fail(f"{name(role)}: grants {rule.get('resources')} in {rule.get('apiGroups')}; only namespaces may be read")
            if not set(rule.get("verbs", [])) <= {"get", "list", "watch"}:
                fail(f"{name(role)}: verbs {rule.get('verbs')} go beyond get, list, watch")
    # Built-in roles the control plane may be bound to: TokenReview for sidecars' proofs.
    builtin = {("ClusterRole", "system:auth-delegator")}
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        ref = binding["roleRef"]
        known = (ref["kind"], ref["name"]) in builtin
        if not known and not any(o["kind"] == ref["kind"] and o["metadata"]["name"] == ref["name"] for o in objects):
            fail(f"{name(binding)}: {ref['kind']}/{ref['name']} is not defined")
        for subject in binding.get("subjects", []):
            if not any(
                o["kind"] == subject["kind"]
                and o["metadata"]["name"] == subject["name"]
                and o["metadata"].get("namespace") == subject.get("namespace")
                for o in objects
            ):
                fail(f"{name(binding)}: subject {subject['kind']}/{subject['name']} is not defined")


def check_webhook(objects, tls):
    configs = [o for o in objects if o["kind"] == "MutatingWebhookConfiguration"]
    if len(configs) != 1:
        return fail(f"expected one MutatingWebhookConfiguration, found {len(configs)}")
    config = configs[0]
    webhooks = config.get("webhooks", [])
    names = [w["name"] for w in webhooks]
    if len(set(names)) != len(names):
        fail(f"{name(config)}: webhook names repeat: {names}")
    for hook in webhooks:
        where = f"{name(config)} webhook {hook['name']}"
        if hook["name"].count(".") < 2:
            fail(f"{where}: the name must be fully qualified (three or more parts)")
        if hook.get("sideEffects") != "None":
            fail(f"{where}: sideEffects must be None (injection only patches the pod), got {hook.get('sideEffects')!r}")
        if hook.get("failurePolicy") != "Ignore":
            fail(f"{where}: failurePolicy must be Ignore (see the reasoning in webhook.yaml), got {hook.get('failurePolicy')!r}")
        if hook.get("timeoutSeconds") != 5:
            fail(f"{where}: timeoutSeconds must be 5, got {hook.get('timeoutSeconds')!r}")
        if "v1" not in hook.get("admissionReviewVersions", []):
            fail(f"{where}: admissionReviewVersions must include v1")
        for rule in hook.get("rules", []):
            if rule.get("operations") != ["CREATE"] or rule.get("resources") != ["pods"]:
                fail(f"{where}: must watch pod CREATE only, got {rule}")
            if rule.get("scope", "*") not in ("Cluster", "Namespaced", "*"):
                fail(f"{where}: scope {rule.get('scope')!r} is not Cluster, Namespaced or *")
        ref = hook.get("clientConfig", {}).get("service", {})
        if ref.get("path") != "/inject" or ref.get("port") != 8443:
            fail(f"{where}: must call /inject on port 8443, got {ref}")
        services = [
            o for o in objects
            if o["kind"] == "Service"
            and o["metadata"]["name"] == ref.get("name")
            and o["metadata"]["namespace"] == ref.get("namespace")
        ]
        if not services or not any(p["port"] == ref.get("port") for p in services[0]["spec"]["ports"]):
            fail(f"{where}: Service {ref.get('namespace')}/{ref.get('name')} with port {ref.get('port')} is not defined")
    by_namespace = [w for w in webhooks if w.get("namespaceSelector", {}).get("matchLabels") == {"bulwark.dev/inject": "enabled"}]
    if not by_namespace:
        fail(f"{name(config)}: no webhook selects namespaces labelled bulwark.dev/inject=enabled")
    for hook in by_namespace:
        if not selects(hook.get("objectSelector", {}), {"bulwark.dev/inject": "enabled"}) or selects(
            hook.get("objectSelector", {}), {"bulwark.dev/inject": "disabled"}
        ):
            fail(f"{name(config)} webhook {hook['name']}: objectSelector must exclude bulwark.dev/inject=disabled")
    for hook in webhooks:
        if selects(hook.get("namespaceSelector", {}), {"kubernetes.io/metadata.name": "bulwark", "bulwark.dev/inject": "disabled"}):
            fail(f"{name(config)} webhook {hook['name']}: must never send Bulwark's own pods to itself")

    annotation = config["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from")
    certificates = [o for o in objects if o["kind"] == "Certificate"]
    if not tls:
        if annotation or certificates:
            fail("the base must not depend on cert-manager")
        return
    serving = [c for c in certificates if c.get("spec", {}).get("secretName") == "bulwark-webhook-tls"]
    if len(serving) != 1:
        return fail(f"expected one cert-manager Certificate for bulwark-webhook-tls, found {len(serving)}")
    for other in certificates:
        if other is not serving[0]:
            check_certificate(objects, other, serving=False)
    cert = serving[0]
    check_certificate(objects, cert)
    expected = f"{cert['metadata']['namespace']}/{cert['metadata']['name']}"
    if annotation != expected:
        fail(f"{name(config)}: annotation cert-manager.io/inject-ca-from must be {expected}, got {annotation!r}")


def check_certificate(objects, cert, serving=True):
    """cert-manager objects are custom resources: kubernetes-validate cannot check them.
    `serving`: the webhook's certificate (names of the Service); else a CA (the identity
    issuer, etcd's CA) or an etcd member's or client's certificate (TLS both ways)."""
    where = name(cert)
    if cert.get("apiVersion") != "cert-manager.io/v1":
        fail(f"{where}: apiVersion must be cert-manager.io/v1")
    spec = cert.get("spec", {})
    known = {"secretName", "dnsNames", "duration", "renewBefore", "privateKey", "usages", "issuerRef", "commonName", "isCA"}
    for field in set(spec) - known:
        fail(f"{where}: unknown field spec.{field}")
    secrets = {
        v["secret"]["secretName"]
        for _, t in pod_templates(objects)
        for v in t["spec"].get("volumes", [])
        if "secret" in v
    }
    # A CA's Secret is used by the Issuer that signs with it.
    secrets |= {
        o["spec"]["ca"]["secretName"]
        for o in objects
        if o["kind"] == "Issuer" and "ca" in o.get("spec", {})
    }
    if spec.get("secretName") not in secrets:
        fail(f"{where}: secretName {spec.get('secretName')!r} is mounted by no pod nor used by an Issuer")
    etcd_tls = spec.get("secretName") in ("bulwark-etcd-tls", "bulwark-etcd-client")
    if serving:
        for svc in (o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "bulwark-control-plane"):
            host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
            if host not in spec.get("dnsNames", []):
                fail(f"{where}: dnsNames must include {host}")
    elif spec.get("isCA") is not True and not etcd_tls:
        fail(f"{where}: a certificate other than the webhook's and etcd's must be a CA (isCA: true)")
    if serving or etcd_tls:
        allowed = {"server auth", "digital signature", "key encipherment", "client auth"}
    else:
        allowed = {"cert sign", "crl sign", "digital signature"}
    for usage in spec.get("usages", []):
        if usage not in allowed:
            fail(f"{where}: usage {usage!r} is not expected")
    key = spec.get("privateKey", {})
    if key.get("algorithm") not in (None, "RSA", "ECDSA", "Ed25519") or key.get("rotationPolicy") not in (None, "Never", "Always"):
        fail(f"{where}: privateKey {key} has an unknown algorithm or rotationPolicy")
    ref = spec.get("issuerRef", {})
    issuers = [
        o for o in objects
        if o["kind"] == ref.get("kind", "Issuer")
        and o["metadata"]["name"] == ref.get("name")
        and o.get("apiVersion") == "cert-manager.io/v1"
    ]
    if not issuers:
        fail(f"{where}: issuerRef {ref} names no Issuer defined here")
    for issuer in issuers:
        if set(issuer.get("spec", {})) - {"selfSigned", "ca"}:
            fail(f"{name(issuer)}: unexpected spec {issuer.get('spec')}")


def check_network_policies(objects):
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if not any(p["spec"]["podSelector"] == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies):
        fail("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")
    expected_ingress = {"bulwark-control-plane": {8080, 8081, 8443, 9090}, "bulwark-etcd": {2379, 2380}}
    for policy in policies:
        selector = policy["spec"]["podSelector"]
        if selector and not selected(objects, policy["metadata"]["namespace"], selector):
            fail(f"{name(policy)}: its podSelector matches no pods")
        app = selector.get("matchLabels", {}).get("app.kubernetes.io/name")
        if app in expected_ingress:
            ports = {p["port"] for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", [])}
            if ports != expected_ingress[app]:
                fail(f"{name(policy)}: ingress ports {sorted(ports)}, expected {sorted(expected_ingress[app])}")
            for rule in policy["spec"].get("ingress", []):
                if not rule.get("ports"):
                    fail(f"{name(policy)}: an ingress rule without ports opens every port")
                # The metrics port is for the monitoring namespace alone, and nothing else is.
                ports = {p["port"] for p in rule.get("ports", [])}
                monitoring = [{"namespaceSelector": {"matchLabels": {"bulwark.dev/monitoring": "true"}}}]
                if 9090 in ports and (ports != {9090} or rule.get("from") != monitoring):
                    fail(f"{name(policy)}: port 9090 (metrics) must be open to namespaces labelled bulwark.dev/monitoring=true alone, in a rule of its own")


def check_scrape_annotations(objects):
    """A pod that asks plain Prometheus to scrape it names one of its container ports."""
    for owner, template in pod_templates(objects):
        annotations = template.get("metadata", {}).get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        ports = {p.get("containerPort") for c in template["spec"]["containers"] for p in c.get("ports", [])}
        port = annotations.get("prometheus.io/port", "")
        if not port.isdigit() or int(port) not in ports:
            fail(f"{name(owner)}: prometheus.io/port {port!r} is not a container port of its pods")


def cmd_manifests(path, tls):
    objects = load_all(path)
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    if namespaces != {"bulwark"}:
        fail(f"expected the namespace bulwark, found {sorted(namespaces)}")
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped and obj["metadata"].get("namespace") != "bulwark":
            fail(f"{name(obj)}: must be in the namespace bulwark")
    check_workloads(objects)
    check_services(objects)
    check_etcd(objects)
    check_rbac(objects)
    check_webhook(objects, tls)
    check_network_policies(objects)
    check_scrape_annotations(objects)
    finish()


# --------------------------------------------------------------------------- monitoring

def cmd_monitors(path, base_path, golden_dir):
    """The Prometheus Operator's objects are custom resources: kubernetes-validate cannot check
    them. Each must be monitoring.coreos.com/v1 in the namespace bulwark; the ServiceMonitor
    must select the control plane's Service and name one of its ports; the PodMonitor must
    select injected pods (their labels in the injector's golden outputs) in every namespace and
    name the sidecar's health port."""
    objects = load_all(path)
    base = load_all(base_path)
    kinds = sorted(o["kind"] for o in objects)
    if kinds != ["PodMonitor", "ServiceMonitor"]:
        fail(f"expected a PodMonitor and a ServiceMonitor, found {kinds}")
    for obj in objects:
        if obj.get("apiVersion") != "monitoring.coreos.com/v1":
            fail(f"{name(obj)}: apiVersion must be monitoring.coreos.com/v1")
        if obj["metadata"].get("namespace") != "bulwark":
            fail(f"{name(obj)}: must be in the namespace bulwark")
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        services = [
            s for s in base
            if s["kind"] == "Service" and selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        if not services:
            fail(f"{name(monitor)}: selects no Service of the base")
        for endpoint in monitor["spec"].get("endpoints", []):
            for service in services:
                if endpoint.get("port") not in {p.get("name") for p in service["spec"]["ports"]}:
                    fail(f"{name(monitor)}: port {endpoint.get('port')!r} is not a port of {name(service)}")
    injected = []
    for path in sorted(os.listdir(golden_dir)):
        if path.endswith(".out.yaml"):
            injected.extend(t for _, t in pod_templates(load_all(os.path.join(golden_dir, path))))
    for monitor in (o for o in objects if o["kind"] == "PodMonitor"):
        if monitor["spec"].get("namespaceSelector") != {"any": True}:
            fail(f"{name(monitor)}: sidecars run in every namespace: namespaceSelector must be {{any: true}}")
        selected_pods = [t for t in injected if selects(monitor["spec"]["selector"], t.get("metadata", {}).get("labels", {}))]
        if len(selected_pods) != len(injected) or not injected:
            fail(f"{name(monitor)}: selects {len(selected_pods)} of the {len(injected)} injected pod templates")
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
            for template in selected_pods:
                ports = {p.get("name") for c in template["spec"].get("initContainers", []) + template["spec"]["containers"] for p in c.get("ports", [])}
                if endpoint.get("port") not in ports:
                    fail(f"{name(monitor)}: port {endpoint.get('port')!r} is not a port of the injected sidecar")
                    break
    finish()


# --------------------------------------------------------------------------- Dockerfiles

DISTROLESS = "gcr.io/distroless/cc-debian12:nonroot"
# Each image: the packages it builds, its runtime base, the user it runs as, and whether the
# runtime stage may RUN (only an image that needs system packages: bulwark-init's iptables).
DOCKERFILES = {
    "deploy/docker/sidecar.Dockerfile": {
        "packages": ["bulwark-sidecar"], "runtime": DISTROLESS, "users": ("nonroot", "65532"), "run": False,
    },
    "deploy/docker/control-plane.Dockerfile": {
        "packages": ["bulwark-control-plane", "meshctl"], "runtime": DISTROLESS,
        "users": ("nonroot", "65532"), "run": False,
    },
    "deploy/docker/init.Dockerfile": {
        "packages": ["bulwark-init"], "runtime": "debian:bookworm-slim", "users": ("0", "root"), "run": True,
    },
}


def instructions(path):
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    joined, current = [], ""
    for line in lines:
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    if current:
        joined.append(current)
    result = []
    for line in joined:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def cargo_commands(text):
    """Every `cargo build ...` command in a shell script or RUN line, as a normalised string."""
    commands = []
    for part in re.split(r"&&|;|\n", text):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:
            continue
        if words[:2] == ["cargo", "build"]:
            commands.append(" ".join(words))
    return commands


def binaries(root, package):
    """The [[bin]] names of a workspace package (its own name when it declares none)."""
    for manifest in ("sidecar", "control-plane", "meshctl", "init"):
        path = os.path.join(root, manifest, "Cargo.toml")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if re.search(rf'^name = "{re.escape(package)}"', text, re.M):
            bins = re.findall(r'\[\[bin\]\]\s*\nname = "([^"]+)"', text)
            return bins or [package]
    return []


def cmd_dockerfiles(root):
    ci_text = ""
    for script in ("scripts/test.sh", ".ci/run"):
        path = os.path.join(root, script)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                ci_text += f.read() + "\n"
    ci_builds = cargo_commands(ci_text)
    if not ci_builds:
        fail("scripts/test.sh and .ci/run run no `cargo build`")
    ci_release = [c for c in ci_builds if "--release" in c.split()]

    for relative, image in DOCKERFILES.items():
        packages = image["packages"]
        path = os.path.join(root, relative)
        if not os.path.exists(path):
            fail(f"{relative}: missing")
            continue
        if not os.path.exists(path + ".dockerignore"):
            fail(f"{relative}: {os.path.basename(path)}.dockerignore is missing (the build context is the repository)")
        steps = instructions(path)
        stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
        if len(stages) < 2:
            fail(f"{relative}: expected a multi-stage build (builder and runtime), found {len(stages)} FROM")
            continue
        builder = steps[stages[0]][1].split()
        if not builder[0].startswith("rust:") or len(builder) < 3 or builder[1].upper() != "AS":
            fail(f"{relative}: the first stage must be `FROM rust:... AS name`, got {' '.join(builder)}")
        build_stage = builder[2] if len(builder) >= 3 else ""
        final = steps[stages[-1]:]
        if final[0][1].split()[0] != image["runtime"]:
            fail(f"{relative}: the runtime stage must be FROM {image['runtime']}")
        users = [args for word, args in final if word == "USER"]
        if not users or users[-1].split(":")[0] not in image["users"]:
            fail(f"{relative}: the runtime stage must set USER {image['users'][0]}, got {users}")
        if not image["run"] and any(word == "RUN" for word, _ in final):
            fail(f"{relative}: the runtime stage has no shell: no RUN there")
        entrypoints = [args for word, args in final if word == "ENTRYPOINT"]
        if not entrypoints or not entrypoints[-1].startswith("["):
            fail(f"{relative}: ENTRYPOINT must be in exec form (JSON array): no shell to run it")

        expected = "cargo build --release --locked " + " ".join(f"-p {p}" for p in packages) + " --bins"
        built = [
            c
            for word, args in steps[: stages[-1]]
            if word == "RUN"
            # RUN's own options (--mount=...) come before the command.
            for c in cargo_commands(re.sub(r"^(--\S+\s+)*", "", args))
        ]
        if built != [expected]:
            fail(f"{relative}: the builder must run exactly `{expected}`, runs {built}")
        if ci_release and expected not in ci_release:
            fail(f"{relative}: `{expected}` is not the release build CI runs ({ci_release})")
        for ci in ci_builds:
            for flag in ("--locked", "--bins"):
                if flag not in ci.split():
                    fail(f"CI's `{ci}` lacks {flag}, which the image build uses")

        copied = [args for word, args in final if word == "COPY"]
        for package in packages:
            for binary in binaries(root, package):
                source = f"/src/target/release/{binary}"
                if not any(f"--from={build_stage}" in c and source in c.split() for c in copied):
                    fail(f"{relative}: the runtime stage must COPY --from={build_stage} {source}")
    finish()


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    command, args = argv[1], argv[2:]
    if command == "render":
        cmd_render(args[0])
    elif command == "same":
        cmd_same(args[0], args[1])
    elif command == "enums":
        cmd_enums(args)
    elif command == "manifests":
        cmd_manifests(args[0], "--tls" in args[1:])
    elif command == "monitors":
        cmd_monitors(args[0], args[1], args[2])
    elif command == "dockerfiles":
        cmd_dockerfiles(args[0])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
