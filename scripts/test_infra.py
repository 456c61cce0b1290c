#!/usr/bin/env python3
"""Checks of infra/ against the code it deploys (run by scripts/infra-check.sh).

Terraform cannot plan here without the AWS provider, so these read the HCL with
python-hcl2 and compare it with what the Rust sources expect:

  * the Lambda environment is exactly what the binaries read (names taken from the
    sources), nothing reserved, and the right values where they are fixed;
  * the driver task definition's container and environment match the ECS launcher's;
  * the Lambda zip paths are where `cargo lambda build` puts the [[bin]]s;
  * topics in event source mappings and IAM policies are the five of Topic::name;
  * the API route is IAM-authorized, the bucket blocks public access, every log group
    has a retention;
  * the variables' validations reject what they should (terraform, no provider needed);
  * scripts/deploy.sh's preflight fails within seconds, naming what is missing, and
    creates nothing.

Prints one line per check and "N passed, M failed"; exits 1 if any failed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import hcl2
from hcl2.utils import SerializationOptions

ROOT = Path(__file__).resolve().parent.parent
# LOADWAVE_INFRA_DIR points the checks at a copy (to see them fail on a broken one).
INFRA = Path(os.environ.get("LOADWAVE_INFRA_DIR", ROOT / "infra"))

# The Rust files whose string literals name the variables the Lambda binaries read.
ENV_SOURCES = [
    "crates/loadwave-orchestrator/src/launcher.rs",
    "crates/loadwave-orchestrator/src/aws.rs",
    "crates/loadwave-kafka/src/args.rs",
    "functions/controller/src/main.rs",
    "functions/api/src/main.rs",
]
# What drivers and the CLI read for themselves; never set on the functions. LOADWAVE_TOKEN
# is the local API's token (the launcher keeps it from the drivers it starts); in AWS, IAM
# authenticates.
NOT_FUNCTION_ENV = {"LOADWAVE_TEST_ID", "LOADWAVE_DRIVER_ID", "LOADWAVE_ORCHESTRATOR", "LOADWAVE_TOKEN"}
# The limits the API enforces on every test, set by infra/ from variables; the code may
# read them from any crate (checked when it does).
LIMITS = {
    "LOADWAVE_MAX_DRIVERS",
    "LOADWAVE_MAX_REQUESTS_PER_DRIVER",
    "LOADWAVE_MAX_RPS",
    "LOADWAVE_MAX_DURATION_S",
}
# Lambda sets these itself and refuses (or silently overrides) them.
LAMBDA_RESERVED = re.compile(
    r"^(AWS_REGION|AWS_DEFAULT_REGION|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN"
    r"|AWS_EXECUTION_ENV|AWS_LAMBDA_.*|AWS_XRAY_.*|_HANDLER|_X_AMZN_TRACE_ID|LAMBDA_TASK_ROOT"
    r"|LAMBDA_RUNTIME_DIR|TZ)$"
)
ENV_LITERAL = re.compile(r'"((?:LOADWAVE_[A-Z0-9_]+)|KAFKA_BROKERS)"')


class CheckFailed(Exception):
    pass


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


# --- reading the HCL ---------------------------------------------------------------------


def _unquote_key(k: str) -> str:
    return k[1:-1] if len(k) >= 2 and k[0] == k[-1] == '"' else k


def load_infra(directory: Path = INFRA) -> dict:
    """All .tf files of `directory` merged: {"resource": {type: {name: body}}, "data": ...,
    "locals": {name: value}, "variable": {name: body}, "output": {...}}."""
    options = SerializationOptions(with_comments=False, explicit_blocks=False)
    merged: dict = {"resource": {}, "data": {}, "locals": {}, "variable": {}, "output": {}}
    files = sorted(directory.glob("*.tf"))
    expect(files, f"no .tf files in {directory}")
    for path in files:
        doc = hcl2.loads(path.read_text(), serialization_options=options)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        merged[kind].setdefault(_unquote_key(rtype), {})[_unquote_key(name)] = body
        for block in doc.get("locals", []):
            merged["locals"].update(block)
        for kind in ("variable", "output"):
            for block in doc.get(kind, []):
                for name, body in block.items():
                    merged[kind][_unquote_key(name)] = body
    return merged


def lit(value) -> str | None:
    """The text of a quoted HCL string literal (interpolations left as they are)."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return None


def resource(infra: dict, rtype: str, name: str) -> dict:
    body = infra["resource"].get(rtype, {}).get(name)
    expect(body is not None, f"resource {rtype}.{name} is missing")
    return body


def block(body: dict, name: str) -> dict:
    value = body.get(name)
    if isinstance(value, list):
        expect(len(value) == 1, f"expected one {name} block, found {len(value)}")
        value = value[0]
    expect(isinstance(value, dict), f"block {name} is missing")
    return value


def local_map(infra: dict, expression) -> dict:
    """An environment map: a literal object, `${local.X}`, or `${merge(local.A, ...)}` of
    locals that are objects."""
    if isinstance(expression, dict):
        return expression
    expect(isinstance(expression, str), f"unexpected environment value {expression!r}")
    inner = expression[2:-1] if expression.startswith("${") and expression.endswith("}") else None
    expect(inner is not None, f"environment is neither an object nor an expression: {expression}")
    names = re.fullmatch(r"\s*local\.(\w+)\s*", inner)
    if names:
        refs = [names.group(1)]
    else:
        m = re.fullmatch(r"\s*merge\(((?:\s*local\.\w+\s*,?)+)\)\s*", inner)
        expect(m is not None, f"environment expression is not a local or a merge of locals: {inner}")
        refs = re.findall(r"local\.(\w+)", m.group(1))
    out: dict = {}
    for ref in refs:
        value = infra["locals"].get(ref)
        expect(isinstance(value, dict), f"local.{ref} is not an object")
        out.update(value)
    return out


# --- reading the Rust sources ----------------------------------------------------------------


def read(rel: str) -> str:
    path = ROOT / rel
    expect(path.is_file(), f"{rel} does not exist (did it move? update ENV_SOURCES)")
    return path.read_text()


def env_names(rel: str) -> set[str]:
    return set(ENV_LITERAL.findall(read(rel))) - NOT_FUNCTION_ENV


def code_limits() -> set[str]:
    """LOADWAVE_MAX_* names the code reads, wherever they are."""
    found: set[str] = set()
    for base in ("crates", "functions"):
        for path in (ROOT / base).rglob("*.rs"):
            found.update(re.findall(r'"(LOADWAVE_MAX_[A-Z0-9_]+)"', path.read_text()))
    return found


def topic_names() -> dict[str, str]:
    """Topic::Variant => wire name, from Topic::name in loadwave-proto."""
    src = read("crates/loadwave-proto/src/message.rs")
    m = re.search(r"pub fn name\(self\)[^{]*\{\s*match self \{(.*?)\n\s*\}", src, re.S)
    expect(m is not None, "Topic::name not found in crates/loadwave-proto/src/message.rs")
    arms = dict(re.findall(r'Topic::(\w+)\s*=>\s*"([^"]+)"', m.group(1)))
    expect(len(arms) == 5, f"expected five topics in Topic::name, found {arms}")
    return arms


def subscribed(rel: str, variants: dict[str, str]) -> set[str]:
    m = re.search(r"\.subscribe\(\s*&\[([^\]]*)\]", read(rel))
    expect(m is not None, f"no subscribe(&[...]) in {rel}")
    return {variants[v] for v in re.findall(r"Topic::(\w+)", m.group(1))}


def bin_name(function_dir: str) -> str:
    cargo = tomllib.loads(read(f"functions/{function_dir}/Cargo.toml"))
    bins = cargo.get("bin", [])
    expect(len(bins) == 1, f"functions/{function_dir}/Cargo.toml: expected one [[bin]], found {len(bins)}")
    return bins[0]["name"]


# --- the checks --------------------------------------------------------------------------

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def function_envs(infra: dict) -> dict[str, dict]:
    envs = {}
    for name in ("api", "controller"):
        fn = resource(infra, "aws_lambda_function", name)
        envs[name] = local_map(infra, block(fn, "environment").get("variables"))
    return envs


@check
def lambda_environment_is_what_the_code_reads(infra):
    common = set()
    for rel in ENV_SOURCES[:3]:
        common |= env_names(rel)
    expect({"KAFKA_BROKERS", "LOADWAVE_STORE", "LOADWAVE_ECS_CLUSTER"} <= common,
           f"too few names found in the sources ({sorted(common)}): did the code move?")
    common |= code_limits()
    controller_only = env_names("functions/controller/src/main.rs") - common
    api_only = env_names("functions/api/src/main.rs") - common
    expect("LOADWAVE_TICKS_PER_SCHEDULE" in controller_only,
           "functions/controller/src/main.rs no longer reads LOADWAVE_TICKS_PER_SCHEDULE")

    envs = function_envs(infra)
    wanted = {"api": common | api_only, "controller": common | controller_only}
    for name, env in envs.items():
        have = set(env)
        missing = wanted[name] - have
        expect(not missing, f"{name} function lacks {sorted(missing)} (read by the code)")
        reserved = {k for k in have if LAMBDA_RESERVED.match(k)}
        expect(not reserved, f"{name} function sets Lambda's reserved {sorted(reserved)}")
        extra = have - wanted[name] - LIMITS
        expect(not extra, f"{name} function sets {sorted(extra)}, which the code does not read")
        expect(LIMITS <= have, f"{name} function lacks the limits {sorted(LIMITS - have)}")
    not_yet = LIMITS - code_limits()
    return f"{len(wanted['controller'])} names from the sources" + (
        f"; limits not read by the code yet: {', '.join(sorted(not_yet))}" if not_yet else "")


@check
def lambda_environment_values(infra):
    env = function_envs(infra)["controller"]
    expect(lit(env["LOADWAVE_KAFKA_AUTH"]) == "msk-iam", "LOADWAVE_KAFKA_AUTH is not msk-iam")
    expect("bootstrap_brokers_sasl_iam" in env["KAFKA_BROKERS"], "KAFKA_BROKERS is not MSK's IAM bootstrap list")
    store = lit(env["LOADWAVE_STORE"]) or ""
    expect(re.fullmatch(r"s3://\$\{aws_s3_bucket\.state\.bucket\}/state", store) is not None,
           f"LOADWAVE_STORE is {env['LOADWAVE_STORE']}, not s3://<state bucket>/state")
    expect(env["LOADWAVE_ECS_CONTAINER"] == "${local.driver_container.name}",
           "LOADWAVE_ECS_CONTAINER is not the driver container's name")
    expect(lit(infra["locals"]["driver_container"]["name"]) == "driver", "the driver container is not named driver")
    cap = infra["locals"]["capacity_provider"]
    expect('"FARGATE_SPOT"' in cap and '"FARGATE"' in cap and "var.use_fargate_spot" in cap,
           f"capacity_provider is {cap}")
    expect(env["LOADWAVE_TICKS_PER_SCHEDULE"] == "${tostring(local.ticks_per_schedule)}",
           "LOADWAVE_TICKS_PER_SCHEDULE is not local.ticks_per_schedule")
    ticks = infra["locals"]["ticks_per_schedule"]
    schedule = lit(infra["locals"]["schedule_expression"])
    expect(schedule == "rate(1 minute)" and ticks == 55,
           f"schedule {schedule} with {ticks} ticks: expected rate(1 minute) and 55")
    rule = resource(infra, "aws_cloudwatch_event_rule", "schedule")
    expect(rule["schedule_expression"] == "${local.schedule_expression}", "the rule does not use local.schedule_expression")
    for k in ("LOADWAVE_ECS_SUBNETS", "LOADWAVE_ECS_SECURITY_GROUPS"):
        expect(env[k].startswith('${join(",",'), f"{k} is not comma-joined")
    return "auth, store, container, capacity provider, ticks"


@check
def driver_task_definition(infra):
    td = resource(infra, "aws_ecs_task_definition", "driver")
    expect(lit(td["family"]) == "${var.name_prefix}-driver", f"family is {td['family']}")
    expect(td["container_definitions"] == "${jsonencode([local.driver_container])}",
           "container_definitions is not jsonencode([local.driver_container])")
    container = infra["locals"]["driver_container"]
    expect(lit(container["name"]) == "driver", "the container is not named driver")
    # The launcher overrides this container by name, and defaults to "driver".
    launcher = read("crates/loadwave-orchestrator/src/launcher.rs")
    expect('unwrap_or_else(|| "driver".to_string())' in launcher,
           "the ECS launcher's default container name is no longer \"driver\"")
    expect("local.driver_environment" in container["environment"], "the container's environment is not local.driver_environment")
    env = infra["locals"]["driver_environment"]
    wanted = {"KAFKA_BROKERS", "LOADWAVE_TOPIC_PREFIX", "LOADWAVE_KAFKA_AUTH", "LOADWAVE_KAFKA_REPLICATION", "AWS_REGION"}
    expect(set(env) == wanted, f"driver environment is {sorted(env)}, expected {sorted(wanted)}")
    expect(lit(env["LOADWAVE_KAFKA_AUTH"]) == "msk-iam", "the driver's LOADWAVE_KAFKA_AUTH is not msk-iam")
    # What the launcher puts in the overrides must be set here too (bar the test id).
    m = re.search(r"fn driver_environment.*?vec!\[(.*?)\]\s*\}", launcher, re.S)
    expect(m is not None, "EcsConfig::driver_environment not found in launcher.rs")
    overridden = set(re.findall(r'"([A-Z_]+)"\.into\(\)', m.group(1))) - {"LOADWAVE_TEST_ID"}
    expect(overridden and overridden <= set(env), f"the launcher overrides {sorted(overridden)}, not all set on the task")
    expect(td["execution_role_arn"] != td["task_role_arn"], "execution and task roles are the same")
    return f"container driver, environment {', '.join(sorted(env))}"


@check
def lambda_zips_are_cargo_lambdas(infra):
    for function_dir, var, local in (("api", "lambda_zip_api", "api_zip"),
                                     ("controller", "lambda_zip_controller", "controller_zip")):
        name = bin_name(function_dir)
        expect(name == f"loadwave-lambda-{function_dir}", f"functions/{function_dir} builds {name}")
        default = lit(infra["variable"][var]["default"])
        expected = f"../target/lambda/{name}/bootstrap.zip"
        expect(default == expected, f"var.{var} defaults to {default}, cargo lambda writes {expected}")
        expect((ROOT / "infra" / default).resolve() == ROOT / "target" / "lambda" / name / "bootstrap.zip",
               f"{default} does not resolve into this repository's target/")
        expect(f"var.{var}" in infra["locals"][local], f"local.{local} does not use var.{var}")
        fn = resource(infra, "aws_lambda_function", function_dir)
        expect(fn["filename"] == f"${{local.{local}}}", f"the {function_dir} function does not deploy local.{local}")
        expect(lit(fn["runtime"]) == "provided.al2023" and lit(fn["handler"]) == "bootstrap",
               f"the {function_dir} function is not provided.al2023/bootstrap")
    timeouts = {n: resource(infra, "aws_lambda_function", n)["timeout"] for n in ("api", "controller")}
    expect(timeouts == {"api": 30, "controller": 120}, f"timeouts are {timeouts}")
    build = read("scripts/build-lambda.sh")
    for n in ("loadwave-lambda-api", "loadwave-lambda-controller"):
        expect(f"--bin {n}" in build, f"scripts/build-lambda.sh does not build {n}")
    expect("cargo lambda build --release" in build and "--output-format zip" in build,
           "scripts/build-lambda.sh does not run cargo lambda build --release ... --output-format zip")
    expect("scripts/build-lambda.sh" in read("scripts/deploy.sh"),
           "scripts/deploy.sh does not build the zips with scripts/build-lambda.sh")
    expect("scripts/build-lambda.sh" in read("Makefile"),
           "the Makefile's build-lambda does not run scripts/build-lambda.sh")
    return "paths match the [[bin]] names"


@check
def topics_are_the_protocols(infra):
    variants = topic_names()
    names = set(variants.values())
    topics = set(infra["locals"]["topics"])
    expect({lit(t) for t in topics} == names, f"local.topics is {sorted(topics)}, Topic::name gives {sorted(names)}")
    controller = {lit(t) for t in infra["locals"]["controller_topics"]}
    expect(controller == {"register", "heartbeat", "metrics"}, f"local.controller_topics is {sorted(controller)}")
    # What the local orchestrator consumes is what the controller must get, and the
    # drivers read the rest.
    expect(subscribed("crates/loadwave-core/src/session.rs", variants) == controller,
           "the orchestrator's subscription differs from the controller's mappings")
    expect(subscribed("crates/loadwave-engine/src/agent.rs", variants) == names - controller,
           "the drivers' subscription differs from what the controller publishes")

    esm = resource(infra, "aws_lambda_event_source_mapping", "controller")
    expect(esm["for_each"] == "${toset(local.controller_topics)}", "the mappings are not one per local.controller_topics")
    expect(esm["topics"] == ['"${local.topic_prefix}${each.key}"'], f"mapping topics are {esm['topics']}")
    expect(lit(esm["starting_position"]) == "LATEST" and esm["batch_size"] == 100
           and esm["maximum_batching_window_in_seconds"] == 1,
           "mappings are not LATEST / batch 100 / window 1 s")
    expect(esm["function_name"] == "${aws_lambda_function.controller.arn}", "the mappings do not feed the controller")

    # Topic ARNs come from the two lists only.
    arn_locals = {"msk_topic_arns": "local.topics", "msk_from_driver_arns": "local.controller_topics",
                  "msk_to_driver_arns": "setsubtract(local.topics, local.controller_topics)"}
    for local, source in arn_locals.items():
        expect(f"in {source} :" in infra["locals"][local], f"local.{local} is not built from {source}")
    topic_actions = {"kafka-cluster:DescribeTopic", "kafka-cluster:ReadData", "kafka-cluster:WriteData",
                     "kafka-cluster:CreateTopic", "kafka-cluster:AlterTopic", "kafka-cluster:DeleteTopic"}
    seen = 0
    for doc_name, doc in infra["data"].get("aws_iam_policy_document", {}).items():
        for st in doc.get("statement", []):
            actions = {lit(a) for a in st.get("actions", [])}
            if not actions & topic_actions:
                continue
            seen += 1
            res = st.get("resources")
            expect(isinstance(res, str) and re.fullmatch(r"\$\{local\.(%s)\}" % "|".join(arn_locals), res),
                   f"{doc_name}: {sorted(actions & topic_actions)} on {res}, not one of the topic ARN lists")
    expect(seen >= 4, f"only {seen} statements grant topic actions")
    # No topic named by hand anywhere.
    text = "\n".join(p.read_text() for p in INFRA.glob("*.tf"))
    for suffix in re.findall(r"\$\{local\.(?:topic_prefix|msk_topic_arn_prefix)\}([A-Za-z0-9_.-]+)", text):
        expect(suffix in names or suffix in {"controller-", "task-"}, f"a topic or group named by hand: {suffix}")
    return f"{', '.join(sorted(names))}; mappings {', '.join(sorted(controller))}"


@check
def api_is_iam_authorized(infra):
    routes = infra["resource"].get("aws_apigatewayv2_route", {})
    expect(routes, "no API routes")
    for name, route in routes.items():
        expect(lit(route.get("authorization_type")) == "AWS_IAM", f"route {name} is not AWS_IAM-authorized")
    expect(lit(routes["default"]["route_key"]) == "$default", "the route is not $default")
    integration = resource(infra, "aws_apigatewayv2_integration", "api")
    expect(lit(integration["payload_format_version"]) == "2.0", "payload format is not 2.0")
    expect(integration["integration_uri"] == "${aws_lambda_function.api.invoke_arn}", "the route does not reach the API function")
    stage = resource(infra, "aws_apigatewayv2_stage", "default")
    expect(lit(stage["name"]) == "$default" and stage["auto_deploy"] is True, "stage is not $default with auto deploy")
    expect("log_group.this" in block(stage, "access_log_settings")["destination_arn"], "no access log group")
    return f"{len(routes)} route(s), AWS_IAM"


@check
def bucket_is_private(infra):
    pab = resource(infra, "aws_s3_bucket_public_access_block", "state")
    expect(pab["bucket"] == "${aws_s3_bucket.state.id}", "the public access block is not on the state bucket")
    for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        expect(pab.get(k) is True, f"{k} is not true")
    policy = infra["data"]["aws_iam_policy_document"]["state_bucket"]
    tls = [s for s in policy["statement"] if lit(s.get("effect")) == "Deny"
           and any(lit(c.get("variable")) == "aws:SecureTransport" for c in s.get("condition", []))]
    expect(tls, "the bucket policy does not deny plain HTTP")
    return "all four blocks on, TLS only"


@check
def every_log_group_has_retention(infra):
    groups = infra["resource"].get("aws_cloudwatch_log_group", {})
    expect(groups, "no log groups")
    for name, g in groups.items():
        r = g.get("retention_in_days")
        expect(r not in (None, 0, "0"), f"log group {name} keeps logs forever")
    default = infra["variable"]["log_retention_days"]["default"]
    expect(isinstance(default, int) and default > 0, "log_retention_days has no positive default")
    names = infra["locals"]["log_groups"]
    for fn in ("api", "controller"):
        function_name = lit(resource(infra, "aws_lambda_function", fn)["function_name"])
        expect(lit(names.get(fn)) == f"/aws/lambda/{function_name}",
               f"the {fn} function's log group {names.get(fn)} is not /aws/lambda/{function_name}")
    return f"{len(names)} groups, {default} days by default"


def terraform_plan(workdir: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_IN_AUTOMATION="1", TF_INPUT="0")
    if env.get("TF_CLI_CONFIG_FILE") and not Path(env["TF_CLI_CONFIG_FILE"]).is_file():
        del env["TF_CLI_CONFIG_FILE"]
    return subprocess.run(["terraform", f"-chdir={workdir}", "plan", "-no-color", "-input=false", *args],
                          capture_output=True, text=True, env=env, timeout=120)


@check
def variable_validations(infra):
    if shutil.which("terraform") is None:
        return "skipped: terraform is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # The variables alone need no provider, so init and plan work offline.
        shutil.copy(INFRA / "variables.tf", work / "variables.tf")
        env = dict(os.environ)
        if env.get("TF_CLI_CONFIG_FILE") and not Path(env["TF_CLI_CONFIG_FILE"]).is_file():
            del env["TF_CLI_CONFIG_FILE"]
        init = subprocess.run(["terraform", f"-chdir={work}", "init", "-backend=false", "-input=false", "-no-color"],
                              capture_output=True, text=True, env=env, timeout=120)
        expect(init.returncode == 0, f"terraform init of the variables failed: {init.stderr[-300:]}")
        ok = terraform_plan(work, ["-var", 'allowed_target_cidrs=["10.0.0.0/8","203.0.113.7/32","169.255.0.0/16"]',
                                   "-var", "driver_memory=2048", "-var", "max_drivers_per_test=500"])
        expect(ok.returncode == 0, f"valid values were refused: {ok.stderr[-400:]}")
        cases = {
            'allowed_target_cidrs=["0.0.0.0/0"]': "must not overlap 169.254.0.0/16",
            'allowed_target_cidrs=["169.254.169.254/32"]': "must not overlap 169.254.0.0/16",
            'allowed_target_cidrs=["128.0.0.0/1"]': "must not overlap 169.254.0.0/16",
            'allowed_target_cidrs=["not-a-cidr"]': "must be an IPv4 CIDR",
            "name_prefix=Load_Wave": "name_prefix must be",
            "name_prefix=lw": "name_prefix must be",
            "driver_cpu=300": "driver_cpu must be one of",
            "max_drivers_per_test=501": "max_drivers_per_test must be",
            "max_test_duration_s=30": "max_test_duration_s must be",
            "lambda_architecture=ppc64": "lambda_architecture must be",
        }
        for value, message in cases.items():
            bad = terraform_plan(work, ["-var", value])
            flat = " ".join(bad.stderr.split())
            expect(bad.returncode != 0 and message in flat, f"-var '{value}' was not refused with \"{message}\"")
    return f"1 valid set accepted, {len(cases)} invalid values refused"


@check
def deploy_preflight_fails_fast(infra):
    before = sorted(p.name for p in INFRA.iterdir())
    lambda_dir = ROOT / "target" / "lambda"
    lambda_before = lambda_dir.stat().st_mtime_ns if lambda_dir.exists() else None
    with tempfile.TemporaryDirectory() as home:
        start = time.monotonic()
        run = subprocess.run(["env", "-i", f"PATH={os.environ['PATH']}", f"HOME={home}",
                              "bash", str(ROOT / "scripts" / "deploy.sh"), "deploy"],
                             capture_output=True, text=True, timeout=60, cwd=home)
        took = time.monotonic() - start
    out = run.stdout + run.stderr
    expect(run.returncode != 0, f"deploy without credentials exited 0:\n{out}")
    expect(took < 10, f"preflight took {took:.1f} s (limit 10 s)")
    expect("AWS credentials" in out and "AWS region" in out, f"the missing credentials and region are not named:\n{out}")
    expect("Nothing was built or created" in out, f"no statement that nothing was created:\n{out}")
    expect(sorted(p.name for p in INFRA.iterdir()) == before, "infra/ changed (init or state files appeared)")
    expect((lambda_dir.stat().st_mtime_ns if lambda_dir.exists() else None) == lambda_before,
           "target/lambda changed: something was built")
    missing = [line.strip()[2:].split(":")[0] for line in out.splitlines() if line.strip().startswith("- ")]
    return f"exit {run.returncode} in {took:.1f} s, missing: {'; '.join(missing)}"


def main() -> int:
    try:
        infra = load_infra()
    except Exception as e:  # noqa: BLE001 — a parse error fails every check
        print(f"FAIL parse infra/: {e}")
        print(f"0 passed, {len(CHECKS)} failed")
        return 1
    passed = failed = 0
    for fn in CHECKS:
        name = fn.__name__
        try:
            note = fn(infra)
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {name}: {e}")
        except Exception as e:  # noqa: BLE001 — a missing key is a failed check too
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        else:
            passed += 1
            print(f"ok   {name}" + (f" ({note})" if note else ""))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
