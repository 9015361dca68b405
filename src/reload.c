/*-------------------------------------------------------------------------
 *
 * reload.c
 *	  twin_state and timer_state written by another transaction than a
 *	  worker's: the workers reload.
 *
 * The workers own twin_state and timer_state and keep them in shared and
 * local memory.  A statement trigger on both lets any other writer (the
 * second step of a parallel pg_restore into a served database, a
 * superuser's repair, the cascade of drop_model()) tell the workers of its
 * database to reload once its change commits.  See dt_worker_reload_deferred
 * in worker.c for the reading side.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/trigger.h"
#include "storage/ipc.h"
#include "storage/latch.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_durable_state_changed);

static bool reload_at_commit = false;
static bool reload_callback_registered = false;

/*
 * A committing change of twin_state is announced twice: 'reload_pending'
 * goes up before the commit becomes visible and down after, when
 * 'reload_generation' moves.  A worker reads both after taking the
 * snapshot of its batch (worker.c): no change pending and the generation
 * it knows mean that its snapshot holds no change it has not loaded.
 */
static DtDatabase *reload_db = NULL;	/* where this backend marked one pending */

static void
dt_reload_unmark(int code, Datum arg)
{
	if (reload_db != NULL)
		pg_atomic_fetch_sub_u32(&reload_db->reload_pending, 1);
	reload_db = NULL;
}

static void
dt_reload_xact_callback(XactEvent event, void *arg)
{
	DtDatabase *db;
	int			i;

	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			if (!reload_at_commit || reload_db != NULL)
				break;
			db = dt_database_current();
			if (db == NULL)
				break;
			pg_atomic_fetch_add_u32(&db->reload_pending, 1);
			reload_db = db;
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			reload_at_commit = false;
			if (reload_db == NULL)
				break;
			db = reload_db;
			pg_atomic_fetch_add_u64(&db->reload_generation, 1);
			dt_reload_unmark(0, 0);
			for (i = 0; i < dt_shared->nworkers; i++)
			{
				Latch	   *latch = db->slots[i].latch;

				if (latch != NULL)
					SetLatch(latch);
			}
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (reload_at_commit)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that wrote digitaltwin.twin_state or digitaltwin.timer_state"),
						 errdetail("The workers reload what another transaction wrote there when it commits; COMMIT PREPARED would not tell them.")));
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			reload_at_commit = false;
			dt_reload_unmark(0, 0);
			break;
		default:
			break;
	}
}

/*
 * AFTER INSERT, UPDATE, DELETE or TRUNCATE statement trigger on twin_state
 * and timer_state.
 * The workers write them in every batch (and ignore their own writes);
 * anyone else (pg_restore loading the extension's data into a served
 * database, a superuser's repair) makes the database's workers reload
 * their twins and timers once the change commits.
 */
Datum
digitaltwin_durable_state_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("digitaltwin.durable_state_changed() must be fired AFTER ... FOR EACH STATEMENT")));
	if (dt_is_worker || !dt_preloaded)
		return PointerGetDatum(NULL);
	if (!reload_callback_registered)
	{
		RegisterXactCallback(dt_reload_xact_callback, NULL);
		/* a backend that exits between the two announcements */
		before_shmem_exit(dt_reload_unmark, (Datum) 0);
		reload_callback_registered = true;
	}
	reload_at_commit = true;
	return PointerGetDatum(NULL);
}

