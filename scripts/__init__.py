"""Helper command-line tools for operating an Easel deployment (`python -m scripts.<name>`).

- `upload_model`: check, pack and upload a checkpoint, diffusers folder, A1111 models folder or LoRA
- `admin_password`: print or rotate the portal's admin password
- `train`: submit a DreamBooth/LoRA training job and follow its progress
- `leftovers`: list (and delete) what a deployment left behind, with hourly costs
- `preflight`: check an AWS account before the first deploy
"""
