/*
 * The local side of the "Remote Postgres → local" example: your own tables,
 * in your own database (here the schema `metering` of Syncline's database).
 * In a real project these come from your migrations; Syncline never creates
 * or alters them, it introspects them and derives its staging tables.
 *
 * Foreign keys between the local tables are real: Syncline orders the
 * entities by dependsOn and postpones deleting a row that another table
 * still references until that table's sync has let go of it.
 *
 * Safe to run again and again: only `if not exists`, never a drop.
 */

create schema if not exists metering;
comment on schema metering is 'Local copy of one tenant''s metering master data, kept in step with the remote by Syncline.';

create table if not exists metering.tenants (
  tenant_id text primary key,
  name text not null,
  timezone text not null,
  is_active boolean not null,
  settings jsonb not null default '{}',
  updated_at timestamptz not null,
  synced_at timestamptz not null default now()
);
comment on table metering.tenants is 'The tenant this installation serves (synced from the remote tenants table).';
comment on column metering.tenants.synced_at is 'Local only: when the row was first copied. Syncline leaves columns it does not sync alone.';

create table if not exists metering.meters (
  tenant_id text not null references metering.tenants,
  meter_id bigint not null,
  serial_no text not null,
  manufacturer text not null,
  model text not null,
  installed_on date,
  location text,
  latitude numeric(9, 6),
  longitude numeric(9, 6),
  is_active boolean not null,
  attributes jsonb not null default '{}',
  updated_at timestamptz not null,
  synced_at timestamptz not null default now(),
  primary key (tenant_id, meter_id),
  unique (tenant_id, serial_no)
);
comment on table metering.meters is 'Meters of the tenant (synced incrementally by updated_at from the remote meters table).';
comment on column metering.meters.synced_at is 'Local only: when the row was first copied.';

create table if not exists metering.registers (
  tenant_id text not null references metering.tenants,
  register_id integer not null,
  obis text not null,
  name text not null,
  unit text not null,
  scale numeric(12, 6) not null,
  cumulative boolean not null,
  attributes jsonb not null default '{}',
  updated_at timestamptz not null,
  primary key (tenant_id, register_id)
);
comment on table metering.registers is 'Register definitions of the tenant; fed by a query template whose columns are renamed by the entity''s column mapping.';
comment on column metering.registers.obis is 'OBIS code (remote: registers.obis_code).';
comment on column metering.registers.scale is 'Multiplier from raw value to unit (remote: registers.multiplier).';

create table if not exists metering.device_register (
  tenant_id text not null,
  meter_id bigint not null,
  register_id integer not null,
  channel smallint not null,
  is_billing boolean not null,
  installed_at timestamptz not null,
  last_reading numeric(14, 3),
  attributes jsonb,
  updated_at timestamptz not null,
  primary key (tenant_id, meter_id, register_id),
  foreign key (tenant_id, meter_id) references metering.meters,
  foreign key (tenant_id, register_id) references metering.registers
);
comment on table metering.device_register is 'Which registers each meter exposes (composite key; references both meters and registers).';
create index if not exists device_register_register_idx on metering.device_register (tenant_id, register_id);
comment on index metering.device_register_register_idx is 'Lets the merge check cheaply whether a register is still referenced before deleting it.';
