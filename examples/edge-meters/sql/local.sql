/*
 * The edge side of the "Edge ⇄ cloud" example: the meter gateway's own small
 * PostgreSQL (Syncline's database on the edge), schema `edge`.
 *
 * readings is the local buffer: the gateway inserts every reading with
 * is_synchronized = false, Syncline pushes them up in batches and deletes
 * each batch once the cloud has committed it. tenants, meters, registers and
 * device_register are this edge's copy of the cloud's configuration, kept
 * current by pull entities.
 *
 * Applied by `syncline edge setup`. Safe to run again and again: only
 * `if not exists`, never a drop.
 */

create schema if not exists edge;
comment on schema edge is 'A meter gateway''s local data: readings waiting to go up, and its copy of the cloud''s configuration.';

create table if not exists edge.tenants (
  tenant_id text primary key,
  name text not null,
  timezone text not null,
  is_active boolean not null,
  updated_at timestamptz not null
);
comment on table edge.tenants is 'The tenant this gateway serves (pulled from the cloud).';

create table if not exists edge.meters (
  tenant_id text not null references edge.tenants,
  meter_id bigint not null,
  serial_no text not null,
  model text not null,
  location text,
  is_active boolean not null,
  updated_at timestamptz not null,
  primary key (tenant_id, meter_id)
);
comment on table edge.meters is 'Meters this gateway reads (pulled from the cloud).';

create table if not exists edge.registers (
  tenant_id text not null references edge.tenants,
  register_id integer not null,
  obis_code text not null,
  unit text not null,
  multiplier numeric(12, 6) not null,
  updated_at timestamptz not null,
  primary key (tenant_id, register_id)
);
comment on table edge.registers is 'Register definitions (OBIS codes) of the tenant (pulled from the cloud).';

create table if not exists edge.device_register (
  tenant_id text not null,
  meter_id bigint not null,
  register_id integer not null,
  channel smallint not null,
  updated_at timestamptz not null,
  primary key (tenant_id, meter_id, register_id),
  foreign key (tenant_id, meter_id) references edge.meters,
  foreign key (tenant_id, register_id) references edge.registers
);
comment on table edge.device_register is 'Which registers each meter exposes, on which channel (pulled from the cloud).';
create index if not exists device_register_register_idx on edge.device_register (tenant_id, register_id);
comment on index edge.device_register_register_idx is 'Deleting a register checks for assignments still pointing at it.';

-- No foreign keys on readings: a gateway must never refuse a reading, even
-- for a meter its configuration does not know yet.
create table if not exists edge.readings (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  meter_id bigint not null,
  register_id integer not null,
  recorded_at timestamptz not null,
  value numeric(14, 3) not null,
  quality smallint not null default 0,
  is_synchronized boolean not null default false,
  created_at timestamptz not null default now()
);
comment on table edge.readings is 'Readings waiting to reach the cloud. Syncline pushes the rows with is_synchronized = false in recorded_at order and deletes each batch once the cloud has committed it.';
comment on column edge.readings.id is 'Local only: what a pushed row is deleted by. The cloud knows a reading by (tenant_id, meter_id, register_id, recorded_at).';
comment on column edge.readings.is_synchronized is 'false: not pushed yet. With afterPush "mark" Syncline sets it to true instead of deleting the row.';

create index if not exists readings_pending_idx on edge.readings (recorded_at, id) where not is_synchronized;
comment on index edge.readings_pending_idx is 'The push''s pick: pending rows (is_synchronized = false) in recorded_at order, each batch starting where the last ended.';
create index if not exists readings_meter_idx on edge.readings (tenant_id, meter_id, recorded_at);
comment on index edge.readings_meter_idx is 'Local queries by tenant and meter over time (the gateway''s own display, checks).';
