output "api_url" {
  description = "Base URL of the HTTP API (LOADWAVE_ORCHESTRATOR); calls must be SigV4-signed for execute-api."
  value       = aws_apigatewayv2_api.this.api_endpoint
}

output "bucket" {
  description = "The state bucket (LOADWAVE_STORE is s3://BUCKET/state)."
  value       = aws_s3_bucket.state.bucket
}

output "ecr_repositories" {
  description = "Repository URL of each image: driver, target, orchestrator."
  value       = { for k, r in aws_ecr_repository.this : k => r.repository_url }
}

output "region" {
  description = "The region everything is in."
  value       = var.region
}

output "msk_bootstrap_brokers" {
  description = "MSK bootstrap brokers for SASL/IAM over TLS (port 9098), reachable from inside the VPC only."
  value       = aws_msk_cluster.this.bootstrap_brokers_sasl_iam
}

output "ecs_cluster" {
  description = "The ECS cluster the drivers run in."
  value       = aws_ecs_cluster.this.name
}

output "driver_log_group" {
  description = "CloudWatch log group of the driver tasks."
  value       = aws_cloudwatch_log_group.this["driver"].name
}
