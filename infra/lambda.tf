# The two functions over one controller core (docs/ARCHITECTURE.md, "The AWS runtime"):
# the API behind API Gateway, and the controller fed by MSK event source mappings and a
# one-minute schedule. Both run in the private subnets (MSK is only reachable there).

locals {
  # Zips as cargo lambda writes them; relative paths are taken from infra/.
  api_zip        = startswith(var.lambda_zip_api, "/") ? var.lambda_zip_api : "${path.module}/${var.lambda_zip_api}"
  controller_zip = startswith(var.lambda_zip_controller, "/") ? var.lambda_zip_controller : "${path.module}/${var.lambda_zip_controller}"

  # The schedule fires once a minute and the controller publishes a tick a second for 55
  # of its seconds, leaving a margin so two scheduled invocations never overlap.
  schedule_expression = "rate(1 minute)"
  ticks_per_schedule  = 55

  # Exactly what the binaries read (crates/loadwave-orchestrator/src/aws.rs and
  # launcher.rs, crates/loadwave-kafka/src/args.rs, functions/controller/src/main.rs);
  # AWS_REGION is Lambda's own and may not be set. scripts/test_infra.py compares this
  # list with the sources.
  function_environment = {
    KAFKA_BROKERS                    = aws_msk_cluster.this.bootstrap_brokers_sasl_iam
    LOADWAVE_TOPIC_PREFIX            = local.topic_prefix
    LOADWAVE_KAFKA_AUTH              = "msk-iam"
    LOADWAVE_KAFKA_REPLICATION       = tostring(local.kafka_replication)
    LOADWAVE_STORE                   = "s3://${aws_s3_bucket.state.bucket}/state"
    LOADWAVE_ECS_CLUSTER             = aws_ecs_cluster.this.arn
    LOADWAVE_ECS_TASK_DEFINITION     = aws_ecs_task_definition.driver.arn
    LOADWAVE_ECS_SUBNETS             = join(",", aws_subnet.private[*].id)
    LOADWAVE_ECS_SECURITY_GROUPS     = join(",", [aws_security_group.drivers.id])
    LOADWAVE_ECS_CAPACITY_PROVIDER   = local.capacity_provider
    LOADWAVE_ECS_CONTAINER           = local.driver_container.name
    LOADWAVE_MAX_DRIVERS             = tostring(var.max_drivers_per_test)
    LOADWAVE_MAX_REQUESTS_PER_DRIVER = tostring(var.max_requests_per_driver)
    LOADWAVE_MAX_RPS                 = tostring(var.max_rps)
    LOADWAVE_MAX_DURATION_S          = tostring(var.max_test_duration_s)
  }

  controller_only_environment = {
    LOADWAVE_TICKS_PER_SCHEDULE = tostring(local.ticks_per_schedule)
  }
}

resource "aws_lambda_function" "api" {
  #checkov:skip=CKV_AWS_116:invoked synchronously by API Gateway only; a failed request is answered to the caller, there is no asynchronous event to dead-letter
  #checkov:skip=CKV_AWS_173:the environment holds no secrets (broker addresses, resource names, limits); Lambda encrypts it at rest with its AWS managed key
  #checkov:skip=CKV_AWS_272:the zip is built from this repository by the deployer's own cargo lambda run; there is no separate signing pipeline to verify against
  function_name                  = "${var.name_prefix}-api"
  description                    = "loadwave API: create, list, read and stop tests"
  role                           = aws_iam_role.api.arn
  filename                       = local.api_zip
  source_code_hash               = try(filebase64sha256(local.api_zip), null) # a destroy needs no zip
  runtime                        = "provided.al2023"
  handler                        = "bootstrap"
  architectures                  = [var.lambda_architecture]
  memory_size                    = 256
  timeout                        = 30
  reserved_concurrent_executions = var.api_reserved_concurrency

  vpc_config {
    subnet_ids         = aws_subnet.private[*].id
    security_group_ids = [aws_security_group.functions.id]
  }

  # X-Ray is opt-in (enable_xray): the binaries emit no subsegments, so Active tracing
  # records only Lambda's own timings, which CloudWatch metrics already show, at $5 per
  # million traces past the free tier (a running test invokes the controller every second).
  tracing_config {
    #tfsec:ignore:aws-lambda-enable-tracing
    mode = var.enable_xray ? "Active" : "PassThrough"
  }

  environment {
    variables = local.function_environment
  }

  lifecycle {
    precondition {
      condition     = fileexists(local.api_zip)
      error_message = "${local.api_zip} does not exist: build it with `cargo lambda build --release --arm64 --output-format zip` (scripts/deploy.sh does)."
    }
  }

  depends_on = [aws_cloudwatch_log_group.this, aws_iam_role_policy.api]
}

resource "aws_lambda_function" "controller" {
  #checkov:skip=CKV_AWS_116:its only asynchronous caller is the one-minute schedule, whose lost invocation the next minute's replaces (retries are off below); MSK batches are retried by the event source mappings
  #checkov:skip=CKV_AWS_173:the environment holds no secrets (broker addresses, resource names, limits); Lambda encrypts it at rest with its AWS managed key
  #checkov:skip=CKV_AWS_272:the zip is built from this repository by the deployer's own cargo lambda run; there is no separate signing pipeline to verify against
  function_name                  = "${var.name_prefix}-controller"
  description                    = "loadwave controller: folds driver messages, publishes configs and triggers, ticks"
  role                           = aws_iam_role.controller.arn
  filename                       = local.controller_zip
  source_code_hash               = try(filebase64sha256(local.controller_zip), null) # a destroy needs no zip
  runtime                        = "provided.al2023"
  handler                        = "bootstrap"
  architectures                  = [var.lambda_architecture]
  memory_size                    = 256
  timeout                        = 120
  reserved_concurrent_executions = var.controller_reserved_concurrency

  vpc_config {
    subnet_ids         = aws_subnet.private[*].id
    security_group_ids = [aws_security_group.functions.id]
  }

  # X-Ray is opt-in (enable_xray): the binaries emit no subsegments, so Active tracing
  # records only Lambda's own timings, which CloudWatch metrics already show, at $5 per
  # million traces past the free tier (a running test invokes the controller every second).
  tracing_config {
    #tfsec:ignore:aws-lambda-enable-tracing
    mode = var.enable_xray ? "Active" : "PassThrough"
  }

  environment {
    variables = merge(local.function_environment, local.controller_only_environment)
  }

  lifecycle {
    precondition {
      condition     = fileexists(local.controller_zip)
      error_message = "${local.controller_zip} does not exist: build it with `cargo lambda build --release --arm64 --output-format zip` (scripts/deploy.sh does)."
    }
  }

  depends_on = [aws_cloudwatch_log_group.this, aws_iam_role_policy.controller]
}

# --- the controller's inputs -------------------------------------------------------------

# One mapping per topic, so a burst of metrics never waits behind registrations. Each
# has its own consumer group, which the controller's role may use (iam.tf).
resource "aws_lambda_event_source_mapping" "controller" {
  for_each = toset(local.controller_topics)

  event_source_arn                   = aws_msk_cluster.this.arn
  function_name                      = aws_lambda_function.controller.arn
  topics                             = ["${local.topic_prefix}${each.key}"]
  starting_position                  = "LATEST"
  batch_size                         = 100
  maximum_batching_window_in_seconds = 1

  amazon_managed_kafka_event_source_config {
    consumer_group_id = "${local.topic_prefix}controller-${each.key}"
  }

  depends_on = [aws_iam_role_policy.controller]
}

resource "aws_cloudwatch_event_rule" "schedule" {
  name                = "${var.name_prefix}-controller-schedule"
  description         = "loadwave: ticks, registration timeouts, stopped driver tasks"
  schedule_expression = local.schedule_expression
}

resource "aws_cloudwatch_event_target" "schedule" {
  rule = aws_cloudwatch_event_rule.schedule.name
  arn  = aws_lambda_function.controller.arn
}

resource "aws_lambda_permission" "schedule" {
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.controller.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.schedule.arn
}

# A scheduled invocation that failed is not worth repeating: the next one comes within
# the minute, and a retry would overlap it.
resource "aws_lambda_function_event_invoke_config" "controller" {
  function_name                = aws_lambda_function.controller.function_name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = 60
}
