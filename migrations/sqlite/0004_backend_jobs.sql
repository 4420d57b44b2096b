-- The backend's id of the job a trial last ran in (a Slurm job id; NULL for local workers),
-- so `status` shows it and `resume` re-attaches to a job still queued or running.
ALTER TABLE trials ADD COLUMN backend_job TEXT;
