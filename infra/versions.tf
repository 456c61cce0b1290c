# loadwave's AWS runtime: the API and controller Lambda functions, MSK for the bus, ECS
# Fargate for the drivers, S3 for test state. See README.md in this folder for what each
# piece costs and why it was chosen.

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }

  # State stays local (infra/terraform.tfstate) unless you add a backend here, e.g. an S3
  # backend with a lock table, before the first `terraform init`.
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project = "loadwave"
      Stack   = var.name_prefix
    }
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# The first two zone names in sorted order, unless availability_zones names them. No
# filter on the zones' state: an AZ that is impaired while you plan must not move the
# subnets (and with them MSK) elsewhere.
data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:only the first two names in sorted order are used (or var.availability_zones), so a zone AWS adds later cannot change which two are chosen
  # Local and Wavelength zones have neither MSK nor Fargate.
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  azs        = length(var.availability_zones) > 0 ? var.availability_zones : slice(sort(data.aws_availability_zones.available.names), 0, 2)

  # Kafka topics are "<prefix><name>"; the five names are Topic::name in
  # crates/loadwave-proto/src/message.rs (scripts/test_infra.py keeps the two in step).
  topic_prefix = "${var.name_prefix}-"
  topics       = ["register", "test_config", "trigger", "metrics", "heartbeat"]

  # The topics the controller consumes through MSK event source mappings.
  controller_topics = ["register", "heartbeat", "metrics"]
}
