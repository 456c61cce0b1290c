# Roles, least privilege: each principal gets the actions its code performs, on the
# resources of this stack only.
#
#   api         S3 state/*, RunTask of the driver family on this cluster, Stop/Describe
#               of this cluster's tasks, PassRole of the two driver roles to ECS tasks,
#               Kafka: connect, describe and write (and create) loadwave's five topics
#   controller  the same, plus reading the three driver topics through its event source
#               mappings' consumer groups, and what the mappings need to find the cluster
#   driver task Kafka: read test_config/trigger, write register/heartbeat/metrics, its
#               own consumer group ("<prefix>task-<task id>")
#   driver exec pull the driver image, write the driver log group
#
# Every Kafka client creates the topics it misses when it connects (KafkaBus::connect),
# the drivers included, so all three may create, but only loadwave's five topic names.

locals {
  driver_family_arn = "arn:${local.partition}:ecs:${var.region}:${local.account_id}:task-definition/${aws_ecs_task_definition.driver.family}:*"
  cluster_tasks_arn = "arn:${local.partition}:ecs:${var.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"
}

# --- the functions -----------------------------------------------------------------------

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "api" {
  name               = "${var.name_prefix}-api"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role" "controller" {
  name               = "${var.name_prefix}-controller"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

# What both functions do.
data "aws_iam_policy_document" "function_common" {
  #checkov:skip=CKV_AWS_111:the only write actions on "*" are the EC2 network-interface calls Lambda makes with the function's role to attach it to the VPC; EC2 has no narrower resource for them
  #checkov:skip=CKV_AWS_356:"*" only for those network-interface calls (and X-Ray's, when enabled), which take no narrower resource
  statement {
    sid       = "ListState"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.state.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["state/*"]
    }
  }

  statement {
    sid     = "ReadWriteState"
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    # Every object under the store's prefix: test ids are made at run time.
    #tfsec:ignore:aws-iam-no-policy-wildcards
    resources = ["${aws_s3_bucket.state.arn}/state/*"]
  }

  statement {
    sid       = "StateEncryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }

  statement {
    sid     = "RunDrivers"
    actions = ["ecs:RunTask"]
    # Any revision of the driver family, and only on this cluster (the condition).
    #tfsec:ignore:aws-iam-no-policy-wildcards
    resources = [local.driver_family_arn]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid     = "WatchAndStopDrivers"
    actions = ["ecs:StopTask", "ecs:DescribeTasks"]
    # The tasks of this cluster; their ids are made at run time.
    #tfsec:ignore:aws-iam-no-policy-wildcards
    resources = [local.cluster_tasks_arn]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid       = "PassDriverRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.driver_task.arn, aws_iam_role.driver_execution.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid = "KafkaConnect"
    actions = [
      "kafka-cluster:Connect",
      "kafka-cluster:DescribeCluster",
      "kafka-cluster:WriteDataIdempotently", # the producers are idempotent
    ]
    resources = [aws_msk_cluster.this.arn]
  }

  statement {
    sid = "KafkaTopicsWrite"
    actions = [
      "kafka-cluster:DescribeTopic",
      "kafka-cluster:WriteData",
      "kafka-cluster:CreateTopic",
    ]
    resources = local.msk_topic_arns
  }

  # Lambda attaches the function to the VPC through network interfaces it manages with
  # the function's role; EC2 offers no narrower resource for these calls.
  statement {
    sid = "VpcNetworkInterfaces"
    actions = [
      "ec2:CreateNetworkInterface",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DeleteNetworkInterface",
      "ec2:AssignPrivateIpAddresses",
      "ec2:UnassignPrivateIpAddresses",
    ]
    #tfsec:ignore:aws-iam-no-policy-wildcards
    resources = ["*"]
  }

  dynamic "statement" {
    for_each = var.enable_xray ? [1] : []

    content {
      sid       = "XRay"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"] # X-Ray has no resource-level permissions
    }
  }
}

data "aws_iam_policy_document" "api" {
  source_policy_documents = [data.aws_iam_policy_document.function_common.json]

  statement {
    sid       = "OwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this["api"].arn}:*"]
  }
}

data "aws_iam_policy_document" "controller" {
  source_policy_documents = [data.aws_iam_policy_document.function_common.json]

  statement {
    sid       = "OwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this["controller"].arn}:*"]
  }

  # The event source mappings read as the function's role.
  statement {
    sid       = "KafkaTopicsRead"
    actions   = ["kafka-cluster:ReadData"]
    resources = local.msk_from_driver_arns
  }

  statement {
    sid     = "KafkaConsumerGroups"
    actions = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    # The three mappings' groups, "<prefix>controller-<topic>".
    #tfsec:ignore:aws-iam-no-policy-wildcards
    resources = ["${local.msk_group_arn_prefix}controller-*"]
  }

  statement {
    sid = "EventSourceMappingCluster"
    actions = [
      "kafka-cluster:DescribeClusterDynamicConfiguration",
      "kafka:DescribeCluster",
      "kafka:DescribeClusterV2",
      "kafka:GetBootstrapBrokers",
    ]
    resources = [aws_msk_cluster.this.arn]
  }

  # The mappings check the cluster's subnets and security group before they start.
  statement {
    sid = "EventSourceMappingNetwork"
    actions = [
      "ec2:DescribeVpcs",
      "ec2:DescribeSubnets",
      "ec2:DescribeSecurityGroups",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "api" {
  name   = "loadwave-api"
  role   = aws_iam_role.api.id
  policy = data.aws_iam_policy_document.api.json
}

resource "aws_iam_role_policy" "controller" {
  name   = "loadwave-controller"
  role   = aws_iam_role.controller.id
  policy = data.aws_iam_policy_document.controller.json
}

# --- the drivers -------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "driver_task" {
  name               = "${var.name_prefix}-driver-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role" "driver_execution" {
  name               = "${var.name_prefix}-driver-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "driver_task" {
  statement {
    sid = "KafkaConnect"
    actions = [
      "kafka-cluster:Connect",
      "kafka-cluster:DescribeCluster",
      "kafka-cluster:WriteDataIdempotently",
    ]
    resources = [aws_msk_cluster.this.arn]
  }

  statement {
    sid       = "KafkaTopics"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:CreateTopic"]
    resources = local.msk_topic_arns
  }

  statement {
    sid       = "KafkaReadOrders"
    actions   = ["kafka-cluster:ReadData"]
    resources = local.msk_to_driver_arns
  }

  statement {
    sid       = "KafkaWriteReports"
    actions   = ["kafka-cluster:WriteData"]
    resources = local.msk_from_driver_arns
  }

  # A driver's consumer group is "<prefix><driver id>", its driver id "task-<task id>":
  # known only once the task runs.
  statement {
    sid     = "KafkaOwnConsumerGroup"
    actions = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    #tfsec:ignore:aws-iam-no-policy-wildcards
    resources = ["${local.msk_group_arn_prefix}task-*"]
  }
}

resource "aws_iam_role_policy" "driver_task" {
  name   = "loadwave-driver"
  role   = aws_iam_role.driver_task.id
  policy = data.aws_iam_policy_document.driver_task.json
}

data "aws_iam_policy_document" "driver_execution" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # an account-wide call, no resource to name
  }

  statement {
    sid = "PullDriverImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:GetDownloadUrlForLayer",
      "ecr:BatchGetImage",
    ]
    resources = [aws_ecr_repository.this["driver"].arn]
  }

  statement {
    sid       = "DriverLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this["driver"].arn}:*"]
  }
}

resource "aws_iam_role_policy" "driver_execution" {
  name   = "loadwave-driver-execution"
  role   = aws_iam_role.driver_execution.id
  policy = data.aws_iam_policy_document.driver_execution.json
}

# --- VPC flow logs -----------------------------------------------------------------------

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  name               = "${var.name_prefix}-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
}

data "aws_iam_policy_document" "flow_logs" {
  statement {
    sid       = "WriteFlowLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.this["flow"].arn}:*"]
  }

  statement {
    sid       = "FindFlowLogGroup"
    actions   = ["logs:DescribeLogGroups"]
    resources = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
  }
}

resource "aws_iam_role_policy" "flow_logs" {
  name   = "loadwave-flow-logs"
  role   = aws_iam_role.flow_logs.id
  policy = data.aws_iam_policy_document.flow_logs.json
}
