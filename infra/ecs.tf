# The drivers: an ECS cluster on Fargate. The API function launches one task per driver
# with RunTask (overriding the container's environment with the test id), the controller
# stops them when the test ends.

locals {
  capacity_provider = var.use_fargate_spot ? "FARGATE_SPOT" : "FARGATE"

  # Memory sizes (MiB) Fargate accepts for each CPU size.
  fargate_memory = {
    "256"  = [512, 1024, 2048]
    "512"  = [for gb in range(1, 5) : gb * 1024]
    "1024" = [for gb in range(2, 9) : gb * 1024]
    "2048" = [for gb in range(4, 17) : gb * 1024]
    "4096" = [for gb in range(8, 31) : gb * 1024]
  }

  # What a driver reads at start; the launcher adds LOADWAVE_TEST_ID per task and repeats
  # the Kafka settings in its overrides.
  driver_environment = {
    KAFKA_BROKERS         = aws_msk_cluster.this.bootstrap_brokers_sasl_iam
    LOADWAVE_TOPIC_PREFIX = local.topic_prefix
    LOADWAVE_KAFKA_AUTH   = "msk-iam"
    # Topics a client creates get one replica per broker, up to MSK's two.
    LOADWAVE_KAFKA_REPLICATION = tostring(local.kafka_replication)
    AWS_REGION                 = var.region
  }

  driver_container = {
    name      = "driver"
    image     = "${aws_ecr_repository.this["driver"].repository_url}:${var.driver_image_tag}"
    essential = true
    cpu       = var.driver_cpu
    memory    = var.driver_memory
    # Sorted, so the JSON ECS stores compares equal and plans stay quiet.
    environment            = [for k in sort(keys(local.driver_environment)) : { name = k, value = local.driver_environment[k] }]
    readonlyRootFilesystem = true
    # A load generator holds many sockets at once.
    ulimits = [{ name = "nofile", softLimit = 65535, hardLimit = 65535 }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this["driver"].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "driver"
      }
    }
  }
}

resource "aws_ecs_cluster" "this" {
  name = var.name_prefix

  # Per-task CPU and memory: whether the drivers, not the target, were the bottleneck.
  setting {
    name  = "containerInsights"
    value = var.enable_container_insights ? "enabled" : "disabled"
  }
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]

  # RunTask names its capacity provider (LOADWAVE_ECS_CAPACITY_PROVIDER); this default
  # only serves tasks started by hand.
  default_capacity_provider_strategy {
    capacity_provider = local.capacity_provider
    weight            = 1
  }
}

resource "aws_ecs_task_definition" "driver" {
  family                   = "${var.name_prefix}-driver"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.driver_cpu)
  memory                   = tostring(var.driver_memory)
  execution_role_arn       = aws_iam_role.driver_execution.arn
  task_role_arn            = aws_iam_role.driver_task.arn
  container_definitions    = jsonencode([local.driver_container])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.driver_architecture
  }

  lifecycle {
    precondition {
      condition     = var.driver_image_tag != ""
      error_message = "driver_image_tag is empty: push the driver image first (scripts/deploy.sh does, and passes its tag)."
    }

    precondition {
      condition     = contains(local.fargate_memory[tostring(var.driver_cpu)], var.driver_memory)
      error_message = "driver_memory ${var.driver_memory} MiB is not a Fargate size for driver_cpu ${var.driver_cpu}; it accepts ${join(", ", [for m in local.fargate_memory[tostring(var.driver_cpu)] : tostring(m)])}."
    }
  }
}
