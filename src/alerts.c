/*-------------------------------------------------------------------------
 *
 * alerts.c
 *	  Alerts raised by models, and dead letters.
 *
 * digitaltwin.alert() only records the alert in worker-local memory.  The
 * worker inserts all alerts of a batch with one statement in the batch's
 * transaction, so an alert exists exactly when the event that raised it
 * was consumed, and sends one NOTIFY per alert right after that commit
 * (dt_alerts_announce; dt_announce_send in util.c says why not before).
 * Alerts of an event whose model later fails are forgotten with the undo of
 * its run (dt_alerts_undo_to).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "dt_internal.h"

PG_FUNCTION_INFO_V1(digitaltwin_alert_sql);
PG_FUNCTION_INFO_V1(digitaltwin_retry_dead_letters);

/*
 * Announcing an alert must not fail once its event was applied: that would
 * fail the whole batch, again at every retry (DESIGN.md, trust rule 3).
 * NOTIFY refuses payloads of 8000 bytes or more, so every part of ours is
 * bounded when the model calls alert(): the model name and the twin id (63
 * bytes each), the severity (DT_ALERT_SEVERITY_MAX), the message clipped to
 * DT_NOTIFY_MESSAGE_MAX.  JSON escaping turns a byte into at most 6, so the
 * payload stays under 6 * (63 + 63 + 64 + 1000) + 100 = 7240 bytes.  The row
 * keeps the whole message, up to digitaltwin.max_payload_size, as it keeps
 * details up to that size.  A model raising more than
 * DT_MAX_ALERTS_PER_EVENT alerts for one event fails that event.
 */
#define DT_NOTIFY_MESSAGE_MAX 1000
#define DT_ALERT_SEVERITY_MAX 64
#define DT_MAX_ALERTS_PER_EVENT 1000
#define DT_NOTIFY_PAYLOAD_MAX 7999

typedef struct DtStagedAlert
{
	DtEvent    *event;
	DtModel    *model;
	char	   *severity;
	char	   *message;
	Jsonb	   *details;
} DtStagedAlert;

static MemoryContext alerts_cxt = NULL;
static DtStagedAlert *alerts = NULL;
static int	nalerts = 0;
static int	alerts_size = 0;

static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr dead_letter_plan = NULL;
static int	dead_letter_plan_level = 0; /* see dt_dead_letter_level() */

/* the notifications of the alerts the last batch inserted */
static DtAnnouncements announce;

void
dt_alerts_begin(MemoryContext cxt)
{
	alerts_cxt = cxt;
	dt_announce_forget(&announce);	/* a failed batch's alerts were never committed */
	alerts_size = 64;
	alerts = MemoryContextAlloc(cxt, sizeof(DtStagedAlert) * alerts_size);
	nalerts = 0;
}

int
dt_alerts_mark(void)
{
	return nalerts;
}

void
dt_alerts_undo_to(int mark)
{
	if (nalerts > mark)
		nalerts = mark;
}

/* The i-th staged alert (i < dt_alerts_mark()), for a rehearsal. */
void
dt_alerts_get(int i, const char **severity, const char **message, Jsonb **details)
{
	Assert(i < nalerts);
	*severity = alerts[i].severity;
	*message = alerts[i].message;
	*details = alerts[i].details;
}

void
digitaltwin_alert(const char *severity, const char *message, Jsonb *details)
{
	DtStagedAlert *a;

	(void) dt_require_model_call("digitaltwin.alert()",
								 "Alerts belong to the twin and event a digitaltwin worker is processing.",
								 "Raise alerts from the process or init function registered with digitaltwin.create_model().");
	if (severity == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("alert severity must not be null")));
	if (*severity == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("alert severity must not be empty")));
	if (strlen(severity) > DT_ALERT_SEVERITY_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("alert severity must be at most %d bytes", DT_ALERT_SEVERITY_MAX),
				 errdetail("The severity has %zu bytes.", strlen(severity)),
				 errhint("Use a short level such as 'info', 'warning' or 'critical'; put the rest in the message or the details.")));
	if (message == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("alert message must not be null")));
	if (strlen(message) > (Size) dt_max_payload_kb * 1024 ||
		(details != NULL && VARSIZE(details) > (Size) dt_max_payload_kb * 1024))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("alert %s is too large", strlen(message) > (Size) dt_max_payload_kb * 1024 ?
						"message" : "details"),
				 errdetail("An alert's message and details may each have digitaltwin.max_payload_size (%d kB).",
						   dt_max_payload_kb)));
	if (nalerts >= DT_MAX_ALERTS_PER_EVENT &&
		alerts[nalerts - DT_MAX_ALERTS_PER_EVENT].event == dt_current_event->event)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a model may raise at most %d alerts for one event", DT_MAX_ALERTS_PER_EVENT)));

	if (nalerts == alerts_size)
	{
		alerts_size *= 2;
		alerts = repalloc(alerts, sizeof(DtStagedAlert) * alerts_size);
	}
	a = &alerts[nalerts++];
	a->event = dt_current_event->event;
	a->model = dt_current_event->model;
	a->severity = MemoryContextStrdup(alerts_cxt, severity);
	a->message = MemoryContextStrdup(alerts_cxt, message);
	a->details = NULL;
	if (details != NULL)
	{
		a->details = MemoryContextAlloc(alerts_cxt, VARSIZE(details));
		memcpy(a->details, details, VARSIZE(details));
	}
}

Datum
digitaltwin_alert_sql(PG_FUNCTION_ARGS)
{
	dt_require_preload();
	(void) dt_require_model_call("digitaltwin.alert()",
								 "Alerts belong to the twin and event a digitaltwin worker is processing.",
								 "Raise alerts from the process or init function registered with digitaltwin.create_model().");
	digitaltwin_alert(PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0)),
					  PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
					  PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2));
	PG_RETURN_VOID();
}

bool
digitaltwin_in_model(void)
{
	return dt_current_event != NULL;
}

const char *
digitaltwin_current_model(void)
{
	return dt_current_event ? dt_current_event->model->name : NULL;
}

const char *
digitaltwin_current_twin_id(void)
{
	return dt_current_event ? dt_current_event->event->twin_id : NULL;
}

int64
digitaltwin_current_event_id(void)
{
	return dt_current_event ? dt_current_event->event->id : 0;
}

bool
digitaltwin_jsonb_get_float8(Jsonb *obj, const char *key, double *result)
{
	JsonbValue	k;
	JsonbValue *v;

	if (obj == NULL || !JB_ROOT_IS_OBJECT(obj) || JB_ROOT_IS_SCALAR(obj))
		return false;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	v = findJsonbValueFromContainer(&obj->root, JB_FOBJECT, &k);
	if (v == NULL || v->type != jbvNumeric)
		return false;
	*result = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
												 NumericGetDatum(v->val.numeric)));
	return true;
}

/* ----------------------------------------------------------------
 * End of batch
 * ----------------------------------------------------------------
 */

static void
dt_notify_alert(int64 id, const char *model, const char *twin_id,
				const char *severity, const char *message, int64 event_id)
{
	StringInfoData buf;
	int			msglen = strlen(message);

	/* NOTIFY payloads are limited to 8000 bytes; the row has the rest */
	if (msglen > DT_NOTIFY_MESSAGE_MAX)
		msglen = pg_mbcliplen(message, msglen, DT_NOTIFY_MESSAGE_MAX);

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"id\": " INT64_FORMAT ", \"model\": ", id);
	escape_json(&buf, model);
	appendStringInfoString(&buf, ", \"twin_id\": ");
	escape_json(&buf, twin_id);
	appendStringInfoString(&buf, ", \"severity\": ");
	escape_json(&buf, severity);
	appendStringInfoString(&buf, ", \"message\": ");
	escape_json(&buf, pnstrdup(message, msglen));
	appendStringInfo(&buf, ", \"event_id\": " INT64_FORMAT "}", event_id);
	/* bounded by construction (see the top of the file) */
	if (buf.len > DT_NOTIFY_PAYLOAD_MAX)
		elog(ERROR, "digitaltwin: alert notification of %d bytes", buf.len);
	dt_announce_add(&announce, buf.data);
	pfree(buf.data);
}

/* Insert alerts [start, end) with one statement; their NOTIFYs follow the commit. */
static void
dt_alerts_insert(int start, int end)
{
	int			n = end - start;
	Datum	   *cols[7];
	bool	   *details_nulls;
	Datum		args[7];
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			ret;
	int			i;
	uint64		r;

	if (insert_plan == NULL)
	{
		Oid			types[7] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, JSONBARRAYOID, INT8ARRAYOID, INT4ARRAYOID};

		/* the version of the model, from version 1.8 on */
		insert_plan = dt_spi_prepare_kept(get_attnum(dt_extension_relid("alerts"), "model_version") != InvalidAttrNumber ?
										  "INSERT INTO digitaltwin.alerts "
										  "(model, twin_id, severity, message, details, event_id, model_version) "
										  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
										  "pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7)) "
										  "RETURNING id, model, twin_id, severity, message, event_id" :
										  "INSERT INTO digitaltwin.alerts "
										  "(model, twin_id, severity, message, details, event_id) "
										  "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), "
										  "pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) "
										  "RETURNING id, model, twin_id, severity, message, event_id",
										  7, types);
	}

	for (i = 0; i < 7; i++)
		cols[i] = palloc(sizeof(Datum) * n);
	details_nulls = palloc(sizeof(bool) * n);
	for (i = 0; i < n; i++)
	{
		DtStagedAlert *a = &alerts[start + i];

		cols[0][i] = CStringGetTextDatum(a->model->name);
		cols[1][i] = CStringGetTextDatum(a->event->twin_id);
		cols[2][i] = CStringGetTextDatum(a->severity);
		cols[3][i] = CStringGetTextDatum(a->message);
		cols[4][i] = PointerGetDatum(a->details);
		details_nulls[i] = (a->details == NULL);
		cols[5][i] = Int64GetDatum(a->event->id);
		cols[6][i] = Int32GetDatum(a->model->version);
	}
	for (i = 0; i < 4; i++)
		args[i] = PointerGetDatum(construct_array(cols[i], n, TEXTOID, -1, false, TYPALIGN_INT));
	args[4] = PointerGetDatum(construct_md_array(cols[4], details_nulls, 1, dims, lbs,
												 JSONBOID, -1, false, TYPALIGN_INT));
	args[5] = PointerGetDatum(construct_array(cols[5], n, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[6] = PointerGetDatum(construct_array(cols[6], n, INT4OID, 4, true, TYPALIGN_INT));

	ret = SPI_execute_plan(insert_plan, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));

	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		dt_notify_alert(DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull)),
						TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull)),
						TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull)),
						TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull)),
						TextDatumGetCString(SPI_getbinval(tup, desc, 5, &isnull)),
						DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull)));
	}
	SPI_freetuptable(SPI_tuptable);
}

/* Call fn for the model of each alert the batch will insert. */
void
dt_alerts_each_model(void (*fn) (int32 model_id, void *arg), void *arg)
{
	int			i;

	for (i = 0; i < nalerts; i++)
		fn(alerts[i].model->id, arg);
}

/*
 * Insert the batch's alerts and prepare their notifications.  Runs inside SPI
 * in the batch's transaction.  Returns the number of alerts.  A statement
 * takes at most DT_FLUSH_BYTES of messages and details: its arrays must
 * stay under the 1 GB a value can have, whatever the batch holds.
 */
int
dt_alerts_flush(void)
{
	int			start = 0;
	int			done = nalerts;
	Size		bytes = 0;
	int			i;

	for (i = 0; i < nalerts; i++)
	{
		Size		size = strlen(alerts[i].message) + strlen(alerts[i].severity) +
			(alerts[i].details ? VARSIZE(alerts[i].details) : 0);

		if (i > start && bytes + size > DT_FLUSH_BYTES)
		{
			dt_alerts_insert(start, i);
			start = i;
			bytes = 0;
		}
		bytes += size;
	}
	if (nalerts > start)
		dt_alerts_insert(start, nalerts);
	nalerts = 0;
	return done;
}

/*
 * One line in the log per dead letter, at most DT_DEAD_LETTER_LOG_RATE a
 * second per worker; the rest are counted and the count logged with the
 * next dead letter after the second is over.  Called after the batch's
 * commit (a batch that rolls back has no dead letters to tell of).
 */
#define DT_DEAD_LETTER_LOG_RATE 10

static TimestampTz log_window = 0;
static int	logged_in_window = 0;
static int64 not_logged = 0;

void
dt_log_dead_letter(const DtEvent *event)
{
	TimestampTz now = GetCurrentTimestamp();

	if (TimestampDifferenceExceeds(log_window, now, 1000))
	{
		if (not_logged > 0)
			ereport(LOG,
					(errmsg("digitaltwin: " INT64_FORMAT " more dead letters were not logged (at most %d a second)",
							not_logged, DT_DEAD_LETTER_LOG_RATE)));
		log_window = now;
		logged_in_window = 0;
		not_logged = 0;
	}
	if (logged_in_window >= DT_DEAD_LETTER_LOG_RATE)
	{
		not_logged++;
		return;
	}
	logged_in_window++;
	ereport(LOG,
			(errmsg("digitaltwin: event " INT64_FORMAT " of model \"%s\" for twin \"%s\" dead-lettered: %s (SQLSTATE %s)",
					event->id, event->model, event->twin_id,
					event->error ? event->error : "unknown error", event->sqlstate),
			 event->error_context ? errcontext_msg("%s", event->error_context) : 0));
}

/* The columns of digitaltwin.dead_letters: 0 = 1.6's, 1 = 1.7's, 2 = 1.8's. */
#define DT_DEAD_LETTER_NEWEST 2

static int
dt_dead_letter_level(void)
{
	Oid			relid = dt_extension_relid("dead_letters");

	if (get_attnum(relid, "model_version") != InvalidAttrNumber)
		return DT_DEAD_LETTER_NEWEST;
	if (get_attnum(relid, "original_id") != InvalidAttrNumber)
		return 1;
	return 0;
}

/*
 * Record an event that could not be applied.  Runs inside SPI in the batch's
 * transaction, which also deletes the event from the queue.  Since version
 * 1.7 the dead letter keeps the rest of the error, the event's time and its
 * original id; with the table of an older version, what it has room for.
 */
void
dt_dead_letter(DtEvent *event)
{
	Oid			types[14] = {INT8OID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, INT4OID,
	INT4OID};
	Datum		args[14];
	char		nulls[14];
	DtModel    *model;
	int			ret;

	/*
	 * The table of an older version until ALTER EXTENSION UPDATE, then the
	 * newer one's (rare: look)
	 */
	if (dead_letter_plan != NULL && dead_letter_plan_level < DT_DEAD_LETTER_NEWEST &&
		dt_dead_letter_level() != dead_letter_plan_level)
	{
		SPI_freeplan(dead_letter_plan);
		dead_letter_plan = NULL;
	}
	if (dead_letter_plan == NULL)
	{
		static const char *const columns[] = {
			/* 1.6 */
			"(event_id, model, twin_id, payload, error, sqlstate, enqueued_at) "
			"VALUES ($1, $2, $3, $4, $5, $6, $7)",
			/* 1.7 */
			"(event_id, model, twin_id, payload, error, sqlstate, enqueued_at, "
			" event_time, detail, hint, context, original_id, model_id) "
			"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
			/* 1.8 */
			"(event_id, model, twin_id, payload, error, sqlstate, enqueued_at, "
			" event_time, detail, hint, context, original_id, model_id, model_version) "
			"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
		};

		int			level = dt_dead_letter_level();

		dead_letter_plan = dt_spi_prepare_kept(psprintf("INSERT INTO digitaltwin.dead_letters %s",
														columns[level]),
											   14, types);
		dead_letter_plan_level = level;
	}
	memset(nulls, ' ', sizeof(nulls));
	args[0] = Int64GetDatum(event->id);
	args[1] = CStringGetTextDatum(event->model);
	args[2] = CStringGetTextDatum(event->twin_id);
	args[3] = JsonbPGetDatum(event->payload);
	args[4] = CStringGetTextDatum(event->error ? event->error : "unknown error");
	args[5] = CStringGetTextDatum(event->sqlstate);
	args[6] = TimestampTzGetDatum(event->enqueued_at);
	args[7] = TimestampTzGetDatum(event->event_time);
	args[8] = event->error_detail ? CStringGetTextDatum(event->error_detail) : (Datum) 0;
	args[9] = event->error_hint ? CStringGetTextDatum(event->error_hint) : (Datum) 0;
	args[10] = event->error_context ? CStringGetTextDatum(event->error_context) : (Datum) 0;
	args[11] = Int64GetDatum(event->retry_of);
	nulls[8] = event->error_detail ? ' ' : 'n';
	nulls[9] = event->error_hint ? ' ' : 'n';
	nulls[10] = event->error_context ? ' ' : 'n';
	nulls[11] = event->retry_of != 0 ? ' ' : 'n';
	/* which model, and version, it was of: another model may get the name later */
	model = dt_model_lookup(event->model);
	args[12] = Int32GetDatum(model ? model->id : 0);
	nulls[12] = model ? ' ' : 'n';
	args[13] = Int32GetDatum(model ? model->version : 0);
	nulls[13] = model ? ' ' : 'n';
	ret = SPI_execute_plan(dead_letter_plan, args, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
}

/* After the batch's commit: one NOTIFY digitaltwin_alerts per alert. */
void
dt_alerts_announce(void)
{
	dt_announce_send(&announce, DT_NOTIFY_CHANNEL);
}

/* After a failed batch: nothing to announce. */
void
dt_alerts_abandon(void)
{
	dt_announce_forget(&announce);
}

void
dt_alerts_forget_plans(void)
{
	if (insert_plan)
		SPI_freeplan(insert_plan);
	if (dead_letter_plan)
		SPI_freeplan(dead_letter_plan);
	insert_plan = NULL;
	dead_letter_plan = NULL;
}

/*
 * retry_dead_letters(model DEFAULT NULL, event_ids DEFAULT NULL): queue
 * dead letters again, oldest first (identity values follow the ORDER BY
 * of an INSERT ... SELECT, so the retried events keep their order), with
 * their event time.  In C since version 1.10, to check the caller's right
 * on the model before the statement runs as the tables' owner: every
 * model for digitaltwin_admin, one model for whoever administers it.
 * Dead letters of a model that no longer exists stay where they are, even
 * when another model has its name now (its owner must not get them).
 */
Datum
digitaltwin_retry_dead_letters(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	char	   *model = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	Oid			argtypes[2] = {TEXTOID, INT8ARRAYOID};
	Datum		args[2];
	char		nulls[2];
	DtTrustedScope scope;
	int			ret;
	int64		n;

	dt_require_preload();
	dt_forbid_in_model("digitaltwin.retry_dead_letters()");
	if (model == NULL && !dt_may_all_models(caller, DT_RIGHT_ADMIN))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to retry the dead letters of every model"),
				 errhint("Members of digitaltwin_admin may; name a model you administer.")));
	if (model != NULL && !dt_model_allowed(model, caller, DT_RIGHT_ADMIN))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to retry the dead letters of model \"%s\"", model),
				 errhint("Members of digitaltwin_admin may retry any model's; digitaltwin.grant_model(model, role, 'admin') lets a role retry one's.")));

	args[0] = model != NULL ? CStringGetTextDatum(model) : (Datum) 0;
	nulls[0] = model != NULL ? ' ' : 'n';
	args[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';

	dt_trusted_enter(&scope);
	ret = SPI_execute_with_args(
		"WITH d AS ("
		"  DELETE FROM digitaltwin.dead_letters l"
		"  WHERE ($1::pg_catalog.text IS NULL OR l.model OPERATOR(pg_catalog.=) $1)"
		"    AND ($2::pg_catalog.int8[] IS NULL"
		"         OR l.event_id OPERATOR(pg_catalog.=) ANY ($2)"
		"         OR l.original_id OPERATOR(pg_catalog.=) ANY ($2))"
		/* of the model that has the name now: by id, or for a dead letter
		 * of an older version (no model_id), one written after the model
		 * was created */
		"    AND EXISTS (SELECT FROM digitaltwin.models m"
		"                WHERE m.name OPERATOR(pg_catalog.=) l.model"
		"                  AND (m.id OPERATOR(pg_catalog.=) l.model_id"
		"                       OR (l.model_id IS NULL"
		"                           AND l.failed_at OPERATOR(pg_catalog.>=) m.created_at)))"
		"  RETURNING l.*)"
		"INSERT INTO digitaltwin.events (model, twin_id, payload, event_time, retry_of)"
		"  SELECT d.model, d.twin_id, d.payload, COALESCE(d.event_time, d.enqueued_at),"
		"         COALESCE(d.original_id, d.event_id)"
		"  FROM d ORDER BY COALESCE(d.original_id, d.event_id)",
		2, argtypes, args, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	n = SPI_processed;
	dt_trusted_leave(&scope);
	PG_RETURN_INT64(n);
}
