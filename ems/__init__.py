"""Local energy manager (meters, PV surplus, site limits, tariffs): produces limits with a reason
through the controller's LimitPort and never touches hardware. Its modules arrive with the EMS
issue; the package exists so the layering (ems never imports firmware) holds from the start."""
