# The bus: a provisioned MSK cluster with IAM access control (SASL/IAM over TLS).
#
# Serverless or provisioned? Judged by what each costs left idle (us-east-1 list prices):
#
#   MSK Serverless            $0.75/h per cluster = $547.50/month, + $0.0015 per
#                             partition-hour (loadwave's 5: $5.48/month) + data in/out
#   provisioned, 2 x kafka.t3.small   2 x $0.0456/h = $66.58/month
#                             + storage 2 x 10 GB x $0.10/GB-month = $2.00/month
#
# Provisioned at $68.58/month is an eighth of serverless; loadwave's traffic (a report a
# second per driver, small) fits t3.small brokers easily. Serverless would only win on
# capacity planning, which this load does not need. The broker count must be a multiple
# of the AZ count: two AZs, two brokers.

resource "aws_msk_configuration" "this" {
  name           = "${var.name_prefix}-kafka"
  kafka_versions = [var.kafka_version]
  description    = "loadwave: topics created on first use with both brokers as replicas"

  # Topics are created by the clients on connect, or by the event source mappings'
  # pollers when they ask for a topic first; either way they get two replicas, and one
  # in-sync replica suffices so writes go on while MSK patches a broker. Messages matter
  # for seconds, so a day of retention is plenty.
  server_properties = <<-EOT
    auto.create.topics.enable=true
    default.replication.factor=2
    min.insync.replicas=1
    num.partitions=1
    log.retention.hours=24
  EOT
}

resource "aws_msk_cluster" "this" {
  cluster_name           = var.name_prefix
  kafka_version          = var.kafka_version
  number_of_broker_nodes = local.msk_brokers

  broker_node_group_info {
    instance_type   = var.msk_broker_instance_type
    client_subnets  = aws_subnet.private[*].id
    security_groups = [aws_security_group.msk.id]

    storage_info {
      ebs_storage_info {
        volume_size = var.msk_broker_volume_gb
      }
    }

    connectivity_info {
      public_access {
        type = "DISABLED"
      }
    }
  }

  client_authentication {
    unauthenticated = false

    sasl {
      iam = true
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.this.arn

    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this.arn
    revision = aws_msk_configuration.this.latest_revision
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.this["msk"].name
      }
    }
  }

  # Creation and deletion take 20-40 minutes each (the provider waits up to 120).
}

locals {
  # Two brokers (one per AZ); topics the clients create are replicated on both.
  msk_brokers       = 2
  kafka_replication = local.msk_brokers

  # MSK IAM resources: the cluster ARN with "cluster" replaced by "topic" or "group" and
  # the resource's name appended.
  msk_topic_arn_prefix = "${replace(aws_msk_cluster.this.arn, ":cluster/", ":topic/")}/${local.topic_prefix}"
  msk_group_arn_prefix = "${replace(aws_msk_cluster.this.arn, ":cluster/", ":group/")}/${local.topic_prefix}"

  # All five topics; the three the drivers write and the controller reads; the two the
  # controller (and the API, for stops) writes and the drivers read.
  msk_topic_arns       = [for t in local.topics : "${local.msk_topic_arn_prefix}${t}"]
  msk_from_driver_arns = [for t in local.controller_topics : "${local.msk_topic_arn_prefix}${t}"]
  msk_to_driver_arns   = [for t in setsubtract(local.topics, local.controller_topics) : "${local.msk_topic_arn_prefix}${t}"]
}
