# Inputs. Every default aims at the cheapest setup that runs a real test; infra/README.md
# lists what each choice costs.

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name and of the Kafka topics: 3 to 20 characters, lowercase letters, digits and hyphens, starting with a letter."
  type        = string
  default     = "loadwave"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 characters of a-z, 0-9 and '-', start with a letter and not end with '-'."
  }
}

# --- drivers (ECS Fargate) -------------------------------------------------------------

variable "driver_cpu" {
  description = "CPU units of one driver task (1024 = 1 vCPU)."
  type        = number
  default     = 256

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096], var.driver_cpu)
    error_message = "driver_cpu must be one of Fargate's sizes: 256, 512, 1024, 2048 or 4096."
  }
}

variable "driver_memory" {
  description = "Memory of one driver task in MiB; it must be a size Fargate pairs with driver_cpu (checked again by a precondition on the task definition)."
  type        = number
  default     = 512

  validation {
    condition     = var.driver_memory == 512 || (var.driver_memory >= 1024 && var.driver_memory <= 30720 && var.driver_memory % 1024 == 0)
    error_message = "driver_memory must be 512 or a multiple of 1024 between 1024 and 30720 MiB."
  }
}

variable "driver_architecture" {
  description = "CPU architecture of the driver image and task: X86_64 or ARM64 (Graviton, about 20% cheaper per vCPU-hour). scripts/deploy.sh builds the images for it."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.driver_architecture)
    error_message = "driver_architecture must be X86_64 or ARM64."
  }
}

variable "driver_image_tag" {
  description = "Tag of the driver image in the driver ECR repository. scripts/deploy.sh pushes the images under the commit's tag and passes it; empty (the default) only serves `terraform destroy` and the first, ECR-only apply."
  type        = string
  default     = ""

  validation {
    condition     = var.driver_image_tag == "" || can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.driver_image_tag))
    error_message = "driver_image_tag must be a valid image tag."
  }
}

variable "use_fargate_spot" {
  description = "Launch drivers on FARGATE_SPOT (about 70% cheaper; AWS may reclaim a task with two minutes' notice, and the test then reports that driver lost) instead of FARGATE."
  type        = bool
  default     = false
}

variable "enable_container_insights" {
  description = "CloudWatch Container Insights on the ECS cluster: per-task CPU and memory, the way to see whether drivers were saturated. Billed as custom metrics and log ingestion while tasks run."
  type        = bool
  default     = true
}

variable "allowed_target_cidrs" {
  description = "IPv4 CIDRs the drivers may send load to (TCP, any port). Empty: the drivers reach only MSK and the VPC endpoints. Targets on the internet also need enable_nat_gateway. Ranges overlapping 169.254.0.0/16 are refused, so 0.0.0.0/0 is too: list the targets' own ranges."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.allowed_target_cidrs : can(cidrnetmask(c))])
    error_message = "Every entry of allowed_target_cidrs must be an IPv4 CIDR such as 203.0.113.0/24."
  }

  # Two ranges overlap when they agree on the shorter of the two prefixes.
  validation {
    condition = alltrue([
      for c in var.allowed_target_cidrs : try(
        cidrhost("${split("/", c)[0]}/${min(16, tonumber(split("/", c)[1]))}", 0) != cidrhost("169.254.0.0/${min(16, tonumber(split("/", c)[1]))}", 0),
        true
      )
    ])
    error_message = "allowed_target_cidrs must not overlap 169.254.0.0/16 (link-local: the instance and task metadata services). 0.0.0.0/0 overlaps it; list the targets' ranges instead."
  }
}

variable "enable_nat_gateway" {
  description = "Create one NAT gateway (one AZ) so drivers can reach targets on the internet. Costs about $36.50 a month idle plus $0.045 per GB of load traffic; AWS APIs keep using the VPC endpoints either way."
  type        = bool
  default     = false
}

variable "vpc_endpoint_az_count" {
  description = "In how many AZs the interface VPC endpoints get a network interface: 1 (default, half the idle cost; the other AZ reaches it across zones) or 2 (survives the loss of an AZ)."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 2], var.vpc_endpoint_az_count)
    error_message = "vpc_endpoint_az_count must be 1 or 2."
  }
}

variable "availability_zones" {
  description = "The two AZs of the private subnets (and so of MSK's two brokers). Empty: the region's first two zone names. Name them if one of those lacks MSK or Fargate capacity in your account."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || length(distinct(var.availability_zones)) == 2
    error_message = "availability_zones must be empty or name two different zones."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC; it is cut into /20 subnets."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR of /20 or larger."
  }
}

# --- limits the API enforces on every test ----------------------------------------------

variable "max_drivers_per_test" {
  description = "Most driver tasks one test may ask for (also bounded by the account's Fargate vCPU quota)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_drivers_per_test >= 1 && var.max_drivers_per_test <= 500 && floor(var.max_drivers_per_test) == var.max_drivers_per_test
    error_message = "max_drivers_per_test must be a whole number from 1 to 500."
  }
}

variable "max_requests_per_driver" {
  description = "Most requests one driver may be asked to send."
  type        = number
  default     = 1000000

  validation {
    condition     = var.max_requests_per_driver >= 1 && floor(var.max_requests_per_driver) == var.max_requests_per_driver
    error_message = "max_requests_per_driver must be a positive whole number."
  }
}

variable "max_rps" {
  description = "Highest request rate a test may ask for."
  type        = number
  default     = 5000

  validation {
    condition     = var.max_rps >= 1 && floor(var.max_rps) == var.max_rps
    error_message = "max_rps must be a positive whole number."
  }
}

variable "max_test_duration_s" {
  description = "Longest test, in seconds."
  type        = number
  default     = 900

  validation {
    condition     = var.max_test_duration_s >= 60 && var.max_test_duration_s <= 7200 && floor(var.max_test_duration_s) == var.max_test_duration_s
    error_message = "max_test_duration_s must be a whole number from 60 to 7200."
  }
}

# --- Lambda ------------------------------------------------------------------------------

variable "lambda_zip_api" {
  description = "Zip of the API function, relative to infra/ or absolute: where `cargo lambda build --release --arm64 --output-format zip` writes the loadwave-lambda-api binary."
  type        = string
  default     = "../target/lambda/loadwave-lambda-api/bootstrap.zip"
}

variable "lambda_zip_controller" {
  description = "Zip of the controller function, relative to infra/ or absolute (cargo lambda's place for loadwave-lambda-controller)."
  type        = string
  default     = "../target/lambda/loadwave-lambda-controller/bootstrap.zip"
}

variable "lambda_architecture" {
  description = "Architecture the zips were built for: arm64 (cargo lambda --arm64; cheaper per GB-second) or x86_64."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.lambda_architecture)
    error_message = "lambda_architecture must be arm64 or x86_64."
  }
}

variable "enable_xray" {
  description = "Active X-Ray tracing on both functions (Lambda's own segments: init, invocation, duration)."
  type        = bool
  default     = false
}

variable "api_reserved_concurrency" {
  description = "Reserved concurrency of the API function: caps how many test launches run at once. Set -1 (unreserved) on accounts whose concurrency quota is still the new-account 10, where any reservation is refused."
  type        = number
  default     = 5
}

variable "controller_reserved_concurrency" {
  description = "Reserved concurrency of the controller: one invocation per topic-partition at a time plus the schedule needs about 4; the rest is headroom. -1 leaves it unreserved (see api_reserved_concurrency)."
  type        = number
  default     = 10
}

variable "api_throttle_rate" {
  description = "Steady requests per second the HTTP API accepts before answering 429."
  type        = number
  default     = 20
}

variable "api_throttle_burst" {
  description = "Burst of requests the HTTP API accepts above the steady rate."
  type        = number
  default     = 40
}

# --- MSK ---------------------------------------------------------------------------------

variable "kafka_version" {
  description = "Apache Kafka version of the MSK cluster."
  type        = string
  default     = "3.6.0"
}

variable "msk_broker_instance_type" {
  description = "Broker size. kafka.t3.small is the cheapest; with IAM auth it accepts about 4 new connections a second per broker, so tests of a hundred drivers or more start faster on kafka.m7g.large."
  type        = string
  default     = "kafka.t3.small"
}

variable "msk_broker_volume_gb" {
  description = "EBS storage per broker, in GiB (loadwave's messages are small and short-lived)."
  type        = number
  default     = 10

  validation {
    condition     = var.msk_broker_volume_gb >= 1 && var.msk_broker_volume_gb <= 16384
    error_message = "msk_broker_volume_gb must be between 1 and 16384."
  }
}

# --- storage, logs, images ---------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of every log group (functions, drivers, API access, brokers, VPC flow logs)."
  type        = number
  default     = 14

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}

variable "state_expiration_days" {
  description = "Days after its last write that a test's state under state/ in the bucket is deleted."
  type        = number
  default     = 90

  validation {
    condition     = var.state_expiration_days >= 1 && floor(var.state_expiration_days) == var.state_expiration_days
    error_message = "state_expiration_days must be a positive whole number."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days a replaced or deleted object version is kept. A running test rewrites its snapshot every second, so keep this short."
  type        = number
  default     = 3

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a positive whole number."
  }
}

variable "ecr_keep_images" {
  description = "Tagged images each ECR repository keeps; older ones are expired."
  type        = number
  default     = 10

  validation {
    condition     = var.ecr_keep_images >= 1 && var.ecr_keep_images <= 1000
    error_message = "ecr_keep_images must be between 1 and 1000."
  }
}
