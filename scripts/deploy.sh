#!/usr/bin/env bash
# Deploys loadwave's AWS runtime (infra/) from this work tree, or destroys it:
#
#   scripts/deploy.sh deploy     (make deploy)
#   scripts/deploy.sh destroy    (make destroy)
#
# deploy: preflight (every missing piece named at once, before anything is built or
# created), the two Lambda zips with cargo lambda, the ECR repositories alone, the three
# images built and pushed under the commit's tag, then everything else; prints the API
# URL and a first command.
# destroy: terraform destroy (the ECR repositories go with their images, the bucket with
# its objects). It asks for confirmation unless LOADWAVE_YES=1.
#
# Settings, all optional:
#   AWS_REGION (or AWS_DEFAULT_REGION, TF_VAR_region, the CLI profile's region)
#   AWS_PROFILE / AWS_ACCESS_KEY_ID ...   the usual AWS credential chain
#   TF_VAR_*                              any variable of infra/variables.tf, e.g.
#                                         TF_VAR_allowed_target_cidrs='["203.0.113.0/24"]'
#   LOADWAVE_LAMBDA_ARCH   arm64 (default) or x86_64: what cargo lambda builds
#   LOADWAVE_DRIVER_ARCH   X86_64 (default) or ARM64: the images' and driver tasks' CPU
#   LOADWAVE_ENGINE        docker or podman (default: whichever answers first)
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

INFRA="$ROOT/infra"
LAMBDA_BINS=(loadwave-lambda-api loadwave-lambda-controller)
# image name => Dockerfile, built with the repository root as context
declare -A DOCKERFILES=(
  [driver]=driver-image/Dockerfile
  [target]=target-image/Dockerfile
  [orchestrator]=crates/loadwave-orchestrator/Dockerfile
)

usage() {
  echo "usage: $0 deploy|destroy" >&2
  exit 2
}

# --- preflight -----------------------------------------------------------------------------

ENGINE=""
REGION=""
ACCOUNT=""

# A container engine that answers, not just a CLI: docker with a reachable daemon, or podman.
find_engine() {
  local candidates=(docker podman)
  [[ -n ${LOADWAVE_ENGINE:-} ]] && candidates=("$LOADWAVE_ENGINE")
  for e in "${candidates[@]}"; do
    if command -v "$e" >/dev/null && timeout 15 "$e" info >/dev/null 2>&1; then
      ENGINE=$e
      return 0
    fi
  done
  return 1
}

find_region() {
  REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-${TF_VAR_region:-}}}
  if [[ -z $REGION ]] && command -v aws >/dev/null; then
    REGION=$(timeout 10 aws configure get region 2>/dev/null || true)
  fi
  [[ -n $REGION ]]
}

# With the aws CLI, ask STS who we are (also proves the credentials work); without it,
# look for credentials where the SDKs and Terraform would.
find_credentials() {
  if command -v aws >/dev/null && timeout 10 aws --version >/dev/null 2>&1; then
    local args=()
    [[ -n $REGION ]] && args=(--region "$REGION")
    ACCOUNT=$(timeout 20 aws sts get-caller-identity "${args[@]}" --query Account --output text 2>/dev/null) \
      && [[ $ACCOUNT =~ ^[0-9]{12}$ ]]
    return
  fi
  [[ -n ${AWS_ACCESS_KEY_ID:-} && -n ${AWS_SECRET_ACCESS_KEY:-} ]] && return 0
  [[ -n ${AWS_PROFILE:-} || -n ${AWS_WEB_IDENTITY_TOKEN_FILE:-} || -n ${AWS_CONTAINER_CREDENTIALS_FULL_URI:-} ]] && return 0
  [[ -s ${AWS_SHARED_CREDENTIALS_FILE:-$HOME/.aws/credentials} ]] && return 0
  [[ -s ${AWS_CONFIG_FILE:-$HOME/.aws/config} ]] && grep -qE '^\s*(sso_|credential_process|role_arn)' "${AWS_CONFIG_FILE:-$HOME/.aws/config}" && return 0
  return 1
}

# Names every missing piece at once and exits before anything is built or created.
preflight() {
  local action=$1 missing=()
  command -v terraform >/dev/null \
    || missing+=("terraform (1.5 or newer): https://developer.hashicorp.com/terraform/install")
  if [[ $action == deploy ]]; then
    # The binaries only; running cargo here could start a toolchain install.
    if ! command -v cargo >/dev/null; then
      missing+=("cargo (Rust): https://rustup.rs")
    elif ! command -v cargo-lambda >/dev/null; then
      missing+=("cargo lambda: pip install cargo-lambda (or https://www.cargo-lambda.info)")
    fi
    find_engine \
      || missing+=("a container engine that answers: docker with its daemon running, or podman (\`${LOADWAVE_ENGINE:-docker} info\` failed)")
    command -v aws >/dev/null \
      || missing+=("the aws CLI, to log in to ECR: https://aws.amazon.com/cli/")
    local name
    for name in driver target orchestrator; do
      [[ -f $ROOT/${DOCKERFILES[$name]} ]] || missing+=("${DOCKERFILES[$name]} (the $name image's Dockerfile)")
    done
  fi
  find_region \
    || missing+=("an AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or TF_VAR_region)")
  find_credentials \
    || missing+=("AWS credentials: none found or \`aws sts get-caller-identity\` failed (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run \`aws configure\` / \`aws sso login\`)")

  if ((${#missing[@]})); then
    printf 'error: %s cannot start; missing:\n' "$action" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    printf 'Nothing was built or created.\n' >&2
    exit 1
  fi
  export TF_VAR_region=$REGION AWS_REGION=$REGION
  log "preflight ok: region $REGION${ACCOUNT:+, account $ACCOUNT}${ENGINE:+, engine $ENGINE}"
}

# --- deploy --------------------------------------------------------------------------------

tf() { terraform -chdir="$INFRA" "$@"; }

# The commit's tag; a dirty tree gets a timestamp too, since tags are immutable.
image_tag() {
  local tag
  tag=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo "untracked")
  if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null) ]]; then
    tag="$tag-dirty-$(date -u +%Y%m%d%H%M%S)"
  fi
  echo "$tag"
}

build_lambdas() {
  export TF_VAR_lambda_architecture=${LOADWAVE_LAMBDA_ARCH:-arm64}
  bash "$ROOT/scripts/build-lambda.sh"
}

push_images() {
  local tag=$1 arch=${LOADWAVE_DRIVER_ARCH:-X86_64} platform registry repo name
  case $arch in
    X86_64) platform=linux/amd64 ;;
    ARM64) platform=linux/arm64 ;;
    *) die "LOADWAVE_DRIVER_ARCH must be X86_64 or ARM64, not $arch" ;;
  esac
  export TF_VAR_driver_architecture=$arch
  registry="$ACCOUNT.dkr.ecr.$REGION.amazonaws.com"
  log "logging $ENGINE in to $registry"
  aws ecr get-login-password --region "$REGION" | "$ENGINE" login --username AWS --password-stdin "$registry"
  for name in driver target orchestrator; do
    repo=$(tf output -json ecr_repositories | python3 -c "import json,sys; print(json.load(sys.stdin)['$name'])")
    if aws ecr describe-images --region "$REGION" --repository-name "${repo#*/}" --image-ids "imageTag=$tag" >/dev/null 2>&1; then
      log "$repo:$tag is already pushed"
      continue
    fi
    log "building and pushing $repo:$tag ($platform)"
    "$ENGINE" build --platform "$platform" -f "$ROOT/${DOCKERFILES[$name]}" -t "$repo:$tag" "$ROOT"
    "$ENGINE" push "$repo:$tag"
  done
}

deploy() {
  preflight deploy
  build_lambdas

  log "terraform init"
  tf init -input=false

  log "creating the ECR repositories first (the images must exist before the tasks that run them)"
  tf apply -input=false -auto-approve -target=aws_ecr_repository.this -target=aws_ecr_lifecycle_policy.this

  local tag
  tag=$(image_tag)
  push_images "$tag"

  log "applying the whole stack (MSK takes 20-40 minutes the first time)"
  tf apply -input=false -auto-approve -var "driver_image_tag=$tag"

  local api
  api=$(tf output -raw api_url)
  cat <<EOF

loadwave is deployed in $REGION.
  API: $api

Drivers may only reach allowed_target_cidrs (TF_VAR_allowed_target_cidrs, empty by default),
and targets on the internet also need TF_VAR_enable_nat_gateway=true.

A first test (SigV4-signed with your AWS credentials):
  loadwave start --orchestrator "$api" --aws-sigv4 \\
      --target-url https://TARGET.example/ --test-type avalanche --drivers 2 --requests-per-driver 10000 --wait

The same with curl:
  curl --aws-sigv4 "aws:amz:$REGION:execute-api" --user "\$AWS_ACCESS_KEY_ID:\$AWS_SECRET_ACCESS_KEY" \\
      \${AWS_SESSION_TOKEN:+-H "x-amz-security-token: \$AWS_SESSION_TOKEN"} \\
      -H 'content-type: application/json' \\
      -d '{"target_url":"https://TARGET.example/","test_type":"avalanche","drivers":2,"requests_per_driver":10000}' \\
      "$api/tests"

Remove it all with: make destroy
EOF
}

destroy() {
  preflight destroy
  log "terraform init"
  tf init -input=false
  local approve=()
  [[ ${LOADWAVE_YES:-} == 1 ]] && approve=(-auto-approve)
  log "destroying the stack in $REGION (ECR images and the state bucket's objects go with it)"
  tf destroy -input=false "${approve[@]}"
}

case ${1:-} in
  deploy) deploy ;;
  destroy) destroy ;;
  *) usage ;;
esac
