/*
 * The remote side of the "Remote Postgres → local" example: a multi-tenant
 * metering database owned by another team (an MDM or billing system).
 * Syncline only ever reads it, in read-only transactions.
 *
 * Safe to run again and again (`if not exists`), so `npm start` can apply it
 * to the demo database on every start.
 */

create table if not exists tenants (
  tenant_id text primary key check (tenant_id ~ '^[a-z][a-z0-9_-]*$'),
  name text not null,
  timezone text not null default 'UTC',
  is_active boolean not null default true,
  settings jsonb not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table tenants is 'Customers of the metering service; every other table is scoped by tenant_id.';
comment on column tenants.settings is 'Free-form tenant settings (billing cycle, contact, feature flags).';

create table if not exists meters (
  tenant_id text not null references tenants on delete cascade,
  meter_id bigint not null,
  serial_no text not null,
  manufacturer text not null,
  model text not null,
  installed_on date,
  location text,
  latitude numeric(9, 6),
  longitude numeric(9, 6),
  is_active boolean not null default true,
  attributes jsonb not null default '{}',
  updated_at timestamptz not null default now(),
  primary key (tenant_id, meter_id),
  unique (tenant_id, serial_no)
);
comment on table meters is 'Physical meters installed at customer sites, one row a meter, per tenant.';
comment on column meters.attributes is 'Device facts that vary by model: phases, communication module, firmware.';
comment on column meters.updated_at is 'Set by the application on every change; Syncline reads incrementally by it.';
create index if not exists meters_updated_at_idx on meters (tenant_id, updated_at);
comment on index meters_updated_at_idx is 'Serves incremental reads: tenant_id = … and updated_at > ….';

create table if not exists registers (
  tenant_id text not null references tenants on delete cascade,
  register_id integer not null,
  obis_code text not null,
  description text not null,
  unit text not null,
  multiplier numeric(12, 6) not null default 1,
  is_cumulative boolean not null default true,
  attrs jsonb not null default '{}',
  updated_at timestamptz not null default now(),
  primary key (tenant_id, register_id),
  unique (tenant_id, obis_code)
);
comment on table registers is 'Register definitions (OBIS codes) a tenant reads from its meters: energy import/export, voltage, current.';
comment on column registers.multiplier is 'Factor from the raw register value to the unit (CT/VT ratios, decimal shifts).';

create table if not exists device_register (
  tenant_id text not null,
  meter_id bigint not null,
  register_id integer not null,
  channel smallint not null,
  is_billing boolean not null default false,
  installed_at timestamptz not null,
  last_reading numeric(14, 3),
  attributes jsonb,
  updated_at timestamptz not null default now(),
  primary key (tenant_id, meter_id, register_id),
  foreign key (tenant_id, meter_id) references meters on delete cascade,
  foreign key (tenant_id, register_id) references registers on delete cascade
);
comment on table device_register is 'Which registers each meter exposes, on which channel, with its last reading.';
create index if not exists device_register_register_idx on device_register (tenant_id, register_id);
comment on index device_register_register_idx is 'Makes deleting a register (and its cascade) cheap.';
