"""Deployment of visionloop: the local server stack (``deploy.local``) and the compose file for a real one."""
