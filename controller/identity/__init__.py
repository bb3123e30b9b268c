"""OIDC Manager: GitHub OIDC token validation, the access matrix, AWS STS and Vault
exchanges, and the credential helper runner pods use."""
