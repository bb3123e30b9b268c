"""Team Verifier: per scale set, a listener consumes the router's stream and lets through
only jobs whose requester is an active member of the team's GitHub teams (cached, audited)."""
