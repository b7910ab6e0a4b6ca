"""Lints and renders the Helm chart charts/sigil with Helm's own engine
(helm-python-sdk binds Helm's Go SDK), validates every rendered object against
the Kubernetes 1.31 schemas in strict mode (kubernetes-validate), checks the
fields the deployment depends on, checks that the values schema refuses
wrong types and unknown keys, naming them, and that the templates refuse
values the schema cannot judge alone (several replicas on SQLite), saying why.

usage: chart_check.py CHART_DIR OUT_DIR

For each scenario it writes OUT_DIR/<scenario>/issuer.toml and agent.toml, the
configuration files as rendered into the ConfigMaps, for the caller to parse
with the binaries' own parsers. Exits non-zero on the first failed check.
"""

import copy
import json
import os
import sys
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

KUBE_VERSION = "1.31.0"
RELEASE = "sigil"
NAMESPACE = "sigil"

# Release name, namespace and values overrides of each rendering.
SCENARIOS = {
    "default": ("sigil", "sigil", {}),
    # An intermediate CA from a Secret, identity rules using every field, and
    # kubelets with self-signed certificates.
    "upstream": (
        "sigil",
        "identity",
        {
            "trustDomain": "prod.example.com",
            "issuer": {
                "upstreamCA": {"secretName": "sigil-upstream-ca", "useCaCrt": True},
            },
            "agent": {"kubelet": {"skipVerificationDangerous": True}},
            "identityRules": [
                {
                    "name": "web",
                    "spiffeId": "spiffe://{trust_domain}/{cluster}/ns/{namespace}/sa/{service_account}",
                    "namespaces": ["shop", "shop-canary"],
                    "podLabels": {"app": "web", "app.kubernetes.io/tier": 'front "end"'},
                    "serviceAccount": "web",
                    "dnsNames": ["{pod_name}.{namespace}.svc", "{label:app}.example.com"],
                    "x509SvidTTL": "30m",
                    "jwtSvidTTL": "2m",
                    "federatesWith": ["partner.example"],
                },
                {
                    "name": "every-pod",
                    "spiffeId": "spiffe://{trust_domain}/pod/{pod_uid}",
                },
            ],
        },
    ),
    # Another image, names, scheduling and resources.
    "custom": (
        "ident",
        "security",
        {
            "image": {
                "repository": "registry.example.com/platform/sigil",
                "tag": "1.2.3",
                "pullPolicy": "Always",
                "pullSecrets": ["regcred"],
            },
            "clusterName": "prod-eu-1",
            "log": {"level": "debug", "format": "text"},
            "svidTTL": {"x509": "4h", "jwt": "10m", "wit": "2h"},
            "identityRules": [],
            "issuer": {
                "caTTL": "72h",
                "agentSvidTTL": "6h",
                "persistence": {"size": "5Gi", "storageClass": "fast-ssd"},
                "podDisruptionBudget": {"enabled": False, "maxUnavailable": 1},
                "resources": {
                    "requests": {"cpu": "250m", "memory": "256Mi"},
                    "limits": {"cpu": 1, "memory": "1Gi"},
                },
                "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/arch",
                                            "operator": "In",
                                            "values": ["amd64", "arm64"],
                                        }
                                    ]
                                }
                            ]
                        }
                    }
                },
            },
            "agent": {
                "tokenAudience": "sigil-prod",
                "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}},
                "tolerations": [
                    {
                        "key": "node-role.kubernetes.io/control-plane",
                        "operator": "Exists",
                        "effect": "NoSchedule",
                    }
                ],
                "nodeSelector": {"kubernetes.io/os": "linux"},
            },
        },
    ),
    # Several issuers sharing one PostgreSQL database, its URL in a Secret.
    "replicated": (
        "sigil",
        "sigil",
        {
            "issuer": {
                "replicas": 3,
                "database": {"type": "postgres", "postgres": {"existingSecret": "sigil-issuer-database"}},
                "logKey": {"existingSecret": "sigil-log-key"},
            },
        },
    ),
}

# Values the schema must refuse, and what the error must name.
REFUSED = [
    ({"trustDomain": 5}, "/trustDomain"),
    ({"issuer": {"persistence": {"size": 10}}}, "/issuer/persistence/size"),
    ({"agent": {"kubelet": {"skipVerificationDangerous": "yes"}}}, "/agent/kubelet/skipVerificationDangerous"),
    ({"issuer": {"replica": 2}}, "'replica'"),
    ({"issuer": {"replicas": 0}}, "/issuer/replicas"),
    ({"issuer": {"replicas": "3"}}, "/issuer/replicas"),
    ({"issuer": {"replicas": 1.5}}, "/issuer/replicas"),
    ({"agent": {"kubelet": {"skipVerification": True}}}, "'skipVerification'"),
    ({"imagee": {"tag": "1"}}, "'imagee'"),
    ({"issuer": {"database": {"type": "mysql"}}}, "/issuer/database/type"),
    # The URL belongs in a Secret, never in the values.
    ({"issuer": {"database": {"postgres": {"url": "postgres://sigil:pw@db/sigil"}}}}, "'url'"),
    ({"issuer": {"database": {"postgres": {"existingSecret": "Sigil_DB"}}}}, "/issuer/database/postgres/existingSecret"),
    ({"issuer": {"database": {"postgres": {"secretKey": ""}}}}, "/issuer/database/postgres/secretKey"),
    ({"svidTTL": {"x509": "soon"}}, "/svidTTL/x509"),
    (
        {"identityRules": [{"name": "x", "spiffeId": "spiffe://{trust_domain}/x", "podLabel": {"a": "b"}}]},
        "'podLabel'",
    ),
    ({"agent": {"tolerations": [{"key": "a", "operator": "Exists", "effects": "NoSchedule"}]}}, "'effects'"),
]


# Values the schema accepts but the templates must refuse, and what the refusal
# must say.
POSTGRES = {"type": "postgres", "postgres": {"existingSecret": "sigil-issuer-database"}}
TEMPLATE_REFUSED = [
    # Each replica would have a SQLite file of its own.
    ({"issuer": {"replicas": 2}}, ["issuer.replicas is 2", "SQLite", "PostgreSQL"]),
    ({"issuer": {"replicas": 5, "database": {"type": "sqlite"}}}, ["issuer.replicas is 5", "SQLite", "PostgreSQL"]),
    ({"issuer": {"database": {"type": "postgres"}}}, ["issuer.database.postgres.existingSecret"]),
    (
        {"issuer": {"replicas": 3, "database": {"type": "postgres", "postgres": {"existingSecret": ""}}}},
        ["issuer.database.postgres.existingSecret"],
    ),
    # Any replica must be able to sign the shared event log.
    ({"issuer": {"replicas": 3, "database": POSTGRES}}, ["issuer.replicas is 3", "issuer.logKey.existingSecret"]),
]


class CheckFailed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise CheckFailed(what)


def lint_clean(chart_dir, values, namespace, what):
    report = helm.lint(chart_dir, values, strict=True, namespace=namespace, kube_version="v" + KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    check(not problems and not report["errors"], f"{what}: helm lint --strict: {problems} {report['errors']}")


def render(chart, name, namespace, values):
    manifests = chart.render(values, name=name, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((path, doc))
    return manifests, objects


def validate_all(objects, what):
    for path, obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise CheckFailed(f"{what}: {path} {obj['kind']} {obj['metadata']['name']}: {error.message}") from None


def by_kind(objects):
    found = {}
    for _, obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        check(key not in found, f"{key} rendered twice")
        found[key] = obj
    return found


def container_of(workload):
    containers = workload["spec"]["template"]["spec"]["containers"]
    check(len(containers) == 1, f"{workload['metadata']['name']}: one container")
    return containers[0]


def volume(pod_spec, name):
    for v in pod_spec["volumes"]:
        if v["name"] == name:
            return v
    raise CheckFailed(f"no volume {name}")


def mount(container, name):
    for m in container["volumeMounts"]:
        if m["name"] == name:
            return m
    raise CheckFailed(f"no volume mount {name}")


def rules_of(role):
    return [
        (tuple(r.get("apiGroups", [])), tuple(r["resources"]), tuple(r.get("resourceNames", [])), tuple(r["verbs"]))
        for r in role["rules"]
    ]


def check_common(objects, name, namespace, values):
    """The fields that hold in every scenario."""
    full = name if "sigil" in name else f"{name}-sigil"
    issuer_name, agent_name, bundle_name = f"{full}-issuer", f"{full}-agent", f"{full}-bundle"
    found = by_kind(objects)
    for _, obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            check(obj["metadata"].get("namespace") == namespace, f"{obj['kind']} {obj['metadata']['name']} namespace")

    # The issuer: a StatefulSet, each replica with its data on a claim.
    sts = found[("StatefulSet", issuer_name)]
    replicas = values["issuer"]["replicas"]
    check(sts["spec"]["replicas"] == replicas, f"issuer replicas {sts['spec']['replicas']}")
    check(sts["spec"]["podManagementPolicy"] == "Parallel", "issuer replicas start independently")
    check(sts["spec"]["serviceName"] == issuer_name, "issuer serviceName")
    pod = sts["spec"]["template"]["spec"]
    c = container_of(sts)
    check(c["command"] == ["sigil-issuer"], "issuer command")
    check(c["args"] == ["run", "--config", "/etc/sigil/issuer.toml"], "issuer args")
    check(pod["serviceAccountName"] == issuer_name, "issuer service account")
    check(c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}, "issuer liveness probe")
    check(c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}, "issuer readiness probe")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"agent-api": 8081, "http": 8082}, f"issuer ports {ports}")
    sc = c["securityContext"]
    check(pod["securityContext"]["runAsUser"] == 65532 and pod["securityContext"]["runAsNonRoot"] is True, "issuer pod user")
    check(pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, "issuer pod seccomp")
    check(sc["runAsUser"] == 65532 and sc["runAsNonRoot"] is True, "issuer non-root")
    check(sc["readOnlyRootFilesystem"] is True, "issuer read-only root")
    check(sc["allowPrivilegeEscalation"] is False, "issuer privilege escalation")
    check(sc["capabilities"] == {"drop": ["ALL"]}, "issuer capabilities")
    check(sc["seccompProfile"] == {"type": "RuntimeDefault"}, "issuer seccomp")
    check(mount(c, "data")["mountPath"] == "/var/lib/sigil", "issuer data mount")
    check(mount(c, "run")["mountPath"] == "/run/sigil" and "emptyDir" in volume(pod, "run"), "issuer admin socket dir")
    check(mount(c, "config")["mountPath"] == "/etc/sigil", "issuer config mount")
    check(volume(pod, "config")["configMap"]["name"] == issuer_name, "issuer config volume")
    env = {e["name"]: e.get("value") for e in c["env"]}
    check(env.get("SIGIL_ADMIN_SOCKET") == "/run/sigil/admin/admin.sock", "issuer admin socket env")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    check(claim["metadata"]["name"] == "data", "issuer claim name")
    check(claim["spec"]["accessModes"] == ["ReadWriteOnce"], "issuer claim access")
    check(
        claim["spec"]["resources"]["requests"]["storage"] == values["issuer"]["persistence"]["size"],
        "issuer claim size",
    )
    storage_class = values["issuer"]["persistence"]["storageClass"]
    check(claim["spec"].get("storageClassName") == (storage_class or None), "issuer claim storage class")

    svc = found[("Service", issuer_name)]
    check(
        {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
        == {("agent-api", 8081, "agent-api"), ("http", 8082, "http")},
        "issuer service ports",
    )
    check(
        all(sts["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items()),
        "issuer service selects the issuer pods",
    )
    pdb = found.get(("PodDisruptionBudget", issuer_name))
    if values["issuer"]["podDisruptionBudget"]["enabled"]:
        check(pdb is not None, "issuer PDB")
        check(pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"], "PDB selector")
        check(pdb["spec"]["maxUnavailable"] == expected_max_unavailable(values), f"PDB {pdb['spec']}")
        check("minAvailable" not in pdb["spec"], "PDB sets maxUnavailable only")
        if replicas > 1:
            check(pdb["spec"]["maxUnavailable"] < replicas, "a drain leaves one issuer of several serving")
    else:
        check(pdb is None, "no issuer PDB when disabled")

    # The agent: a DaemonSet in the host's PID namespace.
    ds = found[("DaemonSet", agent_name)]
    pod = ds["spec"]["template"]["spec"]
    c = container_of(ds)
    check(c["command"] == ["sigil-agent"], "agent command")
    check(c["args"] == ["run", "--config", "/etc/sigil/agent.toml"], "agent args")
    check(pod["hostPID"] is True, "agent hostPID")
    check(pod.get("hostNetwork") is not True, "agent not on the host network")
    check(pod["serviceAccountName"] == agent_name, "agent service account")
    check(c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "health"}, "agent liveness probe")
    check(c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}, "agent readiness probe")
    check([(p["name"], p["containerPort"]) for p in c["ports"]] == [("health", 8088)], "agent health port")
    sc = c["securityContext"]
    check(sc["runAsUser"] == 0, "agent runs as root")
    check(sc["readOnlyRootFilesystem"] is True, "agent read-only root")
    check(sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, "agent privilege")
    check(sc["capabilities"] == {"drop": ["ALL"]}, "agent capabilities: none added")
    check(sc["seccompProfile"] == {"type": "RuntimeDefault"}, "agent seccomp")
    env = {e["name"]: e for e in c["env"]}
    check(env["NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}, "NODE_IP from the downward API")
    check(env["SIGIL_KUBELET_ADDRESS"]["value"] == "https://$(NODE_IP):10250", "kubelet address")
    names = [e["name"] for e in c["env"]]
    check(names.index("NODE_IP") < names.index("SIGIL_KUBELET_ADDRESS"), "NODE_IP defined before its use")
    sockets = volume(pod, "sockets")
    check(sockets["hostPath"] == {"path": "/run/sigil/sockets", "type": "DirectoryOrCreate"}, "socket hostPath")
    check(mount(c, "sockets")["mountPath"] == "/run/sigil/sockets", "socket mount")
    data = volume(pod, "data")
    check(data["hostPath"] == {"path": "/var/lib/sigil/agent", "type": "DirectoryOrCreate"}, "agent data hostPath")
    check(mount(c, "data")["mountPath"] == "/var/lib/sigil/agent", "agent data mount")
    (source,) = volume(pod, "token")["projected"]["sources"]
    token = source["serviceAccountToken"]
    check(token["audience"] == values["agent"]["tokenAudience"], f"token audience {token['audience']}")
    check(token["path"] == "sigil-agent", "token path")
    check(mount(c, "token")["mountPath"] == "/var/run/secrets/tokens", "token mount")
    check(volume(pod, "bundle")["configMap"]["name"] == bundle_name, "bundle volume")
    check(mount(c, "bundle")["mountPath"] == "/run/sigil/bundle" and mount(c, "bundle")["readOnly"], "bundle mount")
    check(volume(pod, "config")["configMap"]["name"] == agent_name, "agent config volume")

    # The bundle ConfigMap, created without data for the issuer to fill.
    bundle = found[("ConfigMap", bundle_name)]
    check("data" not in bundle and "binaryData" not in bundle, "bundle ConfigMap has no data")

    # RBAC.
    cluster_issuer = f"{namespace}-{issuer_name}"
    cluster_agent = f"{namespace}-{agent_name}"
    check(
        rules_of(found[("ClusterRole", cluster_issuer)])
        == [
            (("authentication.k8s.io",), ("tokenreviews",), (), ("create",)),
            (("",), ("pods", "nodes"), (), ("get", "list", "watch")),
        ],
        "issuer ClusterRole",
    )
    check(
        rules_of(found[("Role", issuer_name)])
        == [
            (("",), ("configmaps",), (bundle_name,), ("get", "update", "patch")),
            (("",), ("configmaps",), (), ("create",)),
        ],
        "issuer Role on the bundle ConfigMap",
    )
    check(
        rules_of(found[("ClusterRole", cluster_agent)])
        == [(("",), ("nodes/proxy",), (), ("get",)), (("",), ("pods",), (), ("get", "list"))],
        "agent ClusterRole",
    )
    for kind, binding, role, account in [
        ("ClusterRoleBinding", cluster_issuer, cluster_issuer, issuer_name),
        ("RoleBinding", issuer_name, issuer_name, issuer_name),
        ("ClusterRoleBinding", cluster_agent, cluster_agent, agent_name),
    ]:
        b = found[(kind, binding)]
        check(b["roleRef"]["name"] == role, f"{kind} {binding} role")
        check(b["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": namespace}], f"{binding} subject")
        check(("ServiceAccount", account) in found, f"ServiceAccount {account}")

    # The configuration files.
    issuer_toml = found[("ConfigMap", issuer_name)]["data"]["issuer.toml"]
    agent_toml = found[("ConfigMap", agent_name)]["data"]["agent.toml"]
    issuer = tomllib.loads(issuer_toml)
    agent = tomllib.loads(agent_toml)
    check(issuer["trust_domain"] == values["trustDomain"] == agent["trust_domain"], "trust domain")
    check(issuer["data_dir"] == "/var/lib/sigil/issuer", "issuer data_dir")
    check(issuer["agent_api_address"] == "0.0.0.0:8081" and issuer["http_address"] == "0.0.0.0:8082", "addresses")
    check(issuer["admin_socket_path"] == "/run/sigil/admin/admin.sock", "admin socket")
    check(issuer["ca_ttl"] == values["issuer"]["caTTL"], "ca_ttl")
    check(issuer["agent_svid_ttl"] == values["issuer"]["agentSvidTTL"], "agent_svid_ttl")
    ttl = values["svidTTL"]
    check(
        (issuer["default_x509_svid_ttl"], issuer["default_jwt_svid_ttl"], issuer["default_wit_svid_ttl"])
        == (ttl["x509"], ttl["jwt"], ttl["wit"]),
        "SVID TTLs",
    )
    for cfg in (issuer, agent):
        check((cfg["log_level"], cfg["log_format"]) == (values["log"]["level"], values["log"]["format"]), "log")
    (cluster,) = issuer["k8s_clusters"]
    check(cluster["name"] == values["clusterName"] == agent["k8s_psat_cluster"], "cluster name")
    check(cluster["audience"] == values["agent"]["tokenAudience"], "issuer audience = projected token audience")
    check(cluster["service_account_allow_list"] == [f"{namespace}:{agent_name}"], "allow list")
    check(cluster["bundle_config_map"] == f"{namespace}/{bundle_name}", "bundle_config_map")
    check("kubeconfig" not in cluster, "in-cluster credentials")
    expected_rules = []
    keys = {
        "name": "name",
        "spiffeId": "spiffe_id",
        "namespaces": "namespaces",
        "podLabels": "pod_labels",
        "serviceAccount": "service_account",
        "dnsNames": "dns_names",
        "x509SvidTTL": "x509_svid_ttl",
        "jwtSvidTTL": "jwt_svid_ttl",
        "federatesWith": "federates_with",
    }
    for rule in values["identityRules"]:
        expected_rules.append({keys[k]: v for k, v in rule.items()})
    check(cluster.get("identity_rules", []) == expected_rules, f"identity rules {cluster.get('identity_rules')}")

    check(agent["issuer_address"] == f"{issuer_name}.{namespace}.svc:8081", "issuer address")
    check(agent["data_dir"] == "/var/lib/sigil/agent", "agent data_dir")
    check(agent["socket_path"] == "/run/sigil/sockets/agent.sock", "socket path")
    check(agent["trust_bundle_path"] == "/run/sigil/bundle/bundle.crt", "trust bundle path")
    check(agent["node_attestor"] == "k8s_psat", "node attestor")
    check(agent["k8s_psat_token_path"] == "/var/run/secrets/tokens/sigil-agent", "token path")
    check(agent["k8s_workload_attestor"] is True, "workload attestor")
    check(agent["kubelet_token_path"] == "/var/run/secrets/kubernetes.io/serviceaccount/token", "kubelet token")
    check(agent["health_address"] == "0.0.0.0:8088", "health address")
    check("kubelet_address" not in agent, "kubelet address comes from the environment")
    if values["agent"]["kubelet"]["skipVerificationDangerous"]:
        check(agent.get("kubelet_skip_verification_dangerous") is True, "skip verification")
        check("kubelet_ca_path" not in agent, "no CA with skip verification")
    else:
        check(agent["kubelet_ca_path"] == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "kubelet CA")
        check("kubelet_skip_verification_dangerous" not in agent, "verification on")
    return found, issuer, issuer_toml, agent_toml


def expected_max_unavailable(values):
    """The PDB's maxUnavailable: the value, capped at replicas - 1 when there are several."""
    replicas = values["issuer"]["replicas"]
    wanted = values["issuer"]["podDisruptionBudget"]["maxUnavailable"]
    return min(wanted, replicas - 1) if replicas > 1 else wanted


def check_database(found, manifests, issuer, name, values):
    """PostgreSQL's URL reaches the issuer from the Secret only, never a ConfigMap."""
    full = name if "sigil" in name else f"{name}-sigil"
    sts = found[("StatefulSet", f"{full}-issuer")]
    env = [e for e in container_of(sts)["env"] if e["name"] == "SIGIL_DATABASE_URL"]
    database = values["issuer"]["database"]
    if database["type"] == "postgres":
        postgres = database["postgres"]
        expected = {
            "name": "SIGIL_DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": postgres["existingSecret"], "key": postgres["secretKey"]}},
        }
        check(env == [expected], f"SIGIL_DATABASE_URL from the Secret: {env}")
    else:
        check(env == [], "no SIGIL_DATABASE_URL on SQLite")
    check("database_url" not in issuer, "no database_url in issuer.toml")
    log_key = values["issuer"]["logKey"]["existingSecret"]
    key_env = [e for e in container_of(sts)["env"] if e["name"] == "SIGIL_LOG_KEY_FILE"]
    key_volumes = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "log-key"]
    if log_key:
        check(key_env == [{"name": "SIGIL_LOG_KEY_FILE", "value": "/etc/sigil/log-key/log.jwk"}], f"log key file: {key_env}")
        check(
            len(key_volumes) == 1 and key_volumes[0]["secret"]["secretName"] == log_key,
            f"log key from its Secret: {key_volumes}",
        )
    else:
        check(key_env == [] and key_volumes == [], "the issuer makes its own log key")
    for (kind, obj_name), obj in found.items():
        check(kind != "Secret", f"the chart creates no Secret ({obj_name})")
        if kind == "ConfigMap":
            for key, text in obj.get("data", {}).items():
                for scheme in ("postgres://", "postgresql://"):
                    check(scheme not in text, f"ConfigMap {obj_name} {key} holds a PostgreSQL URL")
    for path, text in manifests.items():
        check("postgres://" not in text and "postgresql://" not in text, f"{path} holds a PostgreSQL URL")


def check_replica_variants(chart):
    """The PDB and the Secret reference with values the scenarios leave at their defaults."""
    for replicas, wanted, expected in [(1, 1, 1), (1, 0, 0), (2, 1, 1), (3, 7, 2), (3, 0, 0)]:
        overrides = {
            "issuer": {
                "replicas": replicas,
                "podDisruptionBudget": {"enabled": True, "maxUnavailable": wanted},
                "database": {"type": "postgres", "postgres": {"existingSecret": "pg", "secretKey": "dsn"}},
                "logKey": {"existingSecret": "log-key"},
            }
        }
        chart.validate_schema(overrides)
        _, objects = render(chart, RELEASE, NAMESPACE, overrides)
        validate_all(objects, f"replicas {replicas}")
        found = by_kind(objects)
        pdb = found[("PodDisruptionBudget", "sigil-issuer")]
        check(
            pdb["spec"]["maxUnavailable"] == expected,
            f"replicas {replicas}, maxUnavailable {wanted}: PDB {pdb['spec']}, expected {expected}",
        )
        sts = found[("StatefulSet", "sigil-issuer")]
        check(sts["spec"]["replicas"] == replicas, f"replicas {replicas}")
        env = {e["name"]: e for e in container_of(sts)["env"]}
        check(
            env["SIGIL_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "pg", "key": "dsn"}},
            "SIGIL_DATABASE_URL from another key",
        )
    # `helm upgrade --reuse-values` takes the defaults of the chart a release
    # was installed with, which may lack the new keys (null removes them here).
    earlier = {"issuer": {"replicas": None, "database": {"type": "postgres", "postgres": {"existingSecret": "pg"}}}}
    earlier["issuer"]["database"]["postgres"]["secretKey"] = None
    merged = chart.merge_values(earlier)["issuer"]
    check("replicas" not in merged and "secretKey" not in merged["database"]["postgres"], "keys removed")
    chart.validate_schema(earlier)
    _, objects = render(chart, RELEASE, NAMESPACE, earlier)
    found = by_kind(objects)
    sts = found[("StatefulSet", "sigil-issuer")]
    env = {e["name"]: e for e in container_of(sts)["env"]}
    check(sts["spec"]["replicas"] == 1, "one replica without issuer.replicas")
    check(
        env["SIGIL_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "pg", "key": "url"}},
        "the key url without issuer.database.postgres.secretKey",
    )
    check(found[("PodDisruptionBudget", "sigil-issuer")]["spec"]["maxUnavailable"] == 1, "PDB without replicas")


def check_template_refused(chart):
    """Values the schema accepts and the templates refuse, saying why, on
    install and on upgrade. `helm lint` renders `fail` as a log line rather
    than an error (Helm's lint mode), so it is not asked here."""
    for bad, said in TEMPLATE_REFUSED:
        chart.validate_schema(bad)
        for action in ({"is_install": True}, {"is_upgrade": True}):
            try:
                chart.render(bad, name=RELEASE, namespace=NAMESPACE, **action)
            except helm.HelmRenderError as error:
                for words in said:
                    check(words in str(error), f"the refusal of {bad} says {words!r}: {error}")
            else:
                raise CheckFailed(f"helm template accepted {bad} ({action})")


def check_upstream_ca(found, issuer, name, values):
    """The upstream CA Secret, mounted and named in issuer.toml."""
    full = name if "sigil" in name else f"{name}-sigil"
    sts = found[("StatefulSet", f"{full}-issuer")]
    pod = sts["spec"]["template"]["spec"]
    secret = values["issuer"]["upstreamCA"]["secretName"]
    if not secret:
        check("upstream_ca" not in issuer, "no upstream_ca without a Secret")
        check(all(v["name"] != "upstream-ca" for v in pod["volumes"]), "no upstream CA volume")
        return
    check(volume(pod, "upstream-ca")["secret"]["secretName"] == secret, "upstream CA Secret")
    check(volume(pod, "upstream-ca")["secret"]["defaultMode"] == 0o440, "upstream CA file mode")
    m = mount(container_of(sts), "upstream-ca")
    check(m["mountPath"] == "/etc/sigil/upstream-ca" and m["readOnly"], "upstream CA mount")
    expected = {"cert_file": "/etc/sigil/upstream-ca/tls.crt", "key_file": "/etc/sigil/upstream-ca/tls.key"}
    if values["issuer"]["upstreamCA"]["useCaCrt"]:
        expected["bundle_file"] = "/etc/sigil/upstream-ca/ca.crt"
    check(issuer["upstream_ca"] == expected, f"upstream_ca {issuer['upstream_ca']}")


def check_scheduling(found, name, values, chart_version):
    full = name if "sigil" in name else f"{name}-sigil"
    for component, kind in (("issuer", "StatefulSet"), ("agent", "DaemonSet")):
        workload = found[(kind, f"{full}-{component}")]
        pod = workload["spec"]["template"]["spec"]
        c = container_of(workload)
        image = values["image"]
        check(c["image"] == f"{image['repository']}:{image['tag'] or chart_version}", f"{component} image")
        check(c["imagePullPolicy"] == image["pullPolicy"], f"{component} pull policy")
        check(
            pod.get("imagePullSecrets", []) == [{"name": s} for s in image["pullSecrets"]], f"{component} pull secrets"
        )
        settings = values[component]
        check(c.get("resources") == settings["resources"], f"{component} resources")
        check(pod.get("nodeSelector", {}) == settings["nodeSelector"], f"{component} nodeSelector")
        check(pod.get("tolerations", []) == settings["tolerations"], f"{component} tolerations")
        check(pod.get("affinity", {}) == settings["affinity"], f"{component} affinity")


def check_refused(chart, chart_dir):
    for bad, named in REFUSED:
        try:
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)
        except helm.HelmValuesError as error:
            check(named in str(error), f"the refusal of {bad} names {named}: {error}")
        else:
            raise CheckFailed(f"helm template accepted {bad}")
        report = helm.lint(chart_dir, bad, strict=True, namespace=NAMESPACE)
        errors = [m["error"] for m in report["messages"] if m["severity"] == 3] + report["errors"]
        check(any(named in e for e in errors), f"helm lint of {bad} names {named}: {report}")


def check_validator_is_strict(objects):
    """The schema check itself refuses a misspelt field deep in a pod spec."""
    (_, sts) = next((p, o) for p, o in objects if o["kind"] == "StatefulSet")
    broken = copy.deepcopy(sts)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    try:
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return
    raise CheckFailed("kubernetes-validate accepted an unknown field")


def main():
    chart_dir, out_dir = sys.argv[1], sys.argv[2]
    print(f"helm SDK {helm.helm_sdk_version()} (helm-c {helm.helm_c_version()}), Kubernetes schemas {KUBE_VERSION}")
    with helm.Chart.load(chart_dir) as chart:
        check(chart.metadata["apiVersion"] == "v2", "chart apiVersion v2")
        chart_version = chart.metadata["appVersion"]
        for scenario, (name, namespace, overrides) in SCENARIOS.items():
            values = chart.merge_values(overrides)
            lint_clean(chart_dir, overrides, namespace, scenario)
            chart.validate_schema(overrides)
            manifests, objects = render(chart, name, namespace, overrides)
            validate_all(objects, scenario)
            found, issuer, issuer_toml, agent_toml = check_common(objects, name, namespace, values)
            check_upstream_ca(found, issuer, name, values)
            check_database(found, manifests, issuer, name, values)
            check_scheduling(found, name, values, chart_version)
            notes = manifests[f"{chart.name}/templates/NOTES.txt"]
            check("SPIFFE_ENDPOINT_SOCKET=unix:///run/sigil/sockets/agent.sock" in notes, "NOTES name the socket")
            warned = "skipVerificationDangerous is true" in notes
            check(warned == values["agent"]["kubelet"]["skipVerificationDangerous"], "NOTES warn of skip verification")
            on_postgres = values["issuer"]["database"]["type"] == "postgres"
            check(("database   PostgreSQL" in notes) == on_postgres, "NOTES name the database")
            if scenario == "default":
                check_validator_is_strict(objects)
            target = os.path.join(out_dir, scenario)
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, "issuer.toml"), "w") as f:
                f.write(issuer_toml)
            with open(os.path.join(target, "agent.toml"), "w") as f:
                f.write(agent_toml)
            print(f"{scenario}: {len(objects)} objects valid, lint clean, fields checked")
        check_replica_variants(chart)
        print("replicas: PDB keeps one of several issuers, URL from any Secret key, earlier values default")
        check_refused(chart, chart_dir)
        print(f"schema: {len(REFUSED)} bad values refused by template and lint, naming the key")
        check_template_refused(chart)
        print(f"templates: {len(TEMPLATE_REFUSED)} inconsistent values refused on install and upgrade, saying why")
    print(json.dumps({"scenarios": list(SCENARIOS)}))


if __name__ == "__main__":
    try:
        main()
    except (CheckFailed, helm.HelmError, KeyError) as error:
        print(f"chart check failed: {error}", file=sys.stderr)
        sys.exit(1)
