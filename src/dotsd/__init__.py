"""dotsd: DDoS Open Threat Signaling (DOTS) client, server and gateway."""

__version__ = "0.1.0"
